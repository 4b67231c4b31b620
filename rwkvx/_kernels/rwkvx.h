/* The rwkvx C core: a model description filled from Python, and the forward pass.
 *
 * Python memory-maps the weights and fills an rwkvx_model with pointers into
 * them; the C side owns no weights. Each tensor sits in a named slot (the
 * X-macros below, which also give the tensor's name in rwkv.cpp files, so
 * Python looks slots up by name instead of mirroring an enum).
 *
 * A forward call runs embedding, a range of layers and the head for T tokens
 * without returning to Python. The layer range lets a caller run a segment of
 * layers here and another elsewhere (GPU offload), passing the residual
 * stream x (and v7's v_first) between them.
 */
#ifndef RWKVX_H
#define RWKVX_H

#include <stddef.h>
#include <stdint.h>

#include "blocks.h"
#include "packed.h"

enum rwkvx_arch { RWKVX_ARCH_V4 = 4, RWKVX_ARCH_V5_1 = 51, RWKVX_ARCH_V5_2 = 52, RWKVX_ARCH_V6 = 6, RWKVX_ARCH_V7 = 7 };

/* A weight tensor: n_rows rows of n_in elements, of a weight type from blocks.h.
 * A matrix y = W x maps n_in -> n_rows. Vectors are stored as one row of F32.
 * data may be misaligned (mmap of a packed file); kernels read it with memcpy.
 * layout: RWKVX_LAYOUT_ROWS (0: the file's rows), RWKVX_LAYOUT_PACKED16 or
 * RWKVX_LAYOUT_PACKED16_PLANES (a quantized matrix rewritten for the SIMD
 * kernels, see packed.h). */
typedef struct rwkvx_tensor {
    const void *data;
    int32_t type;
    int32_t n_in;
    int32_t n_rows;
    int32_t layout;
} rwkvx_tensor;

/* Tensors of the whole model: slot, name in the file. */
#define RWKVX_GLOBAL_SLOTS(X)          \
    X(EMB, "emb.weight")               \
    X(LN0_W, "blocks.0.ln0.weight")    \
    X(LN0_B, "blocks.0.ln0.bias")      \
    X(LN_OUT_W, "ln_out.weight")       \
    X(LN_OUT_B, "ln_out.bias")         \
    X(HEAD, "head.weight")

/* Tensors of one layer: slot, name after "blocks.<i>.". Unused slots stay NULL.
 * Vectors arrive canonicalized to n_embd floats (see rwkvx/_model_desc.py). */
#define RWKVX_LAYER_SLOTS(X)                                                        \
    X(LN1_W, "ln1.weight") X(LN1_B, "ln1.bias") X(LN2_W, "ln2.weight") X(LN2_B, "ln2.bias") \
    X(ATT_K, "att.key.weight") X(ATT_V, "att.value.weight")                        \
    X(ATT_R, "att.receptance.weight") X(ATT_O, "att.output.weight")                \
    X(ATT_G, "att.gate.weight")                                                     \
    X(ATT_MIX_K, "att.time_mix_k") X(ATT_MIX_V, "att.time_mix_v")                  \
    X(ATT_MIX_R, "att.time_mix_r") X(ATT_MIX_G, "att.time_mix_g")                  \
    X(ATT_FIRST, "att.time_first") X(ATT_DECAY, "att.time_decay")                  \
    X(ATT_FAAAA, "att.time_faaaa")                                                  \
    X(LNX_W, "att.ln_x.weight") X(LNX_B, "att.ln_x.bias")                          \
    X(MAA_X, "att.time_maa_x") X(MAA_W, "att.time_maa_w") X(MAA_K, "att.time_maa_k") \
    X(MAA_V, "att.time_maa_v") X(MAA_R, "att.time_maa_r") X(MAA_G, "att.time_maa_g") \
    X(MAA_W1, "att.time_maa_w1") X(MAA_W2, "att.time_maa_w2")                      \
    X(DECAY_W1, "att.time_decay_w1") X(DECAY_W2, "att.time_decay_w2")              \
    X(X_RWKVAG, "att.x_rwkvag")                                                     \
    X(W0, "att.w0") X(W1, "att.w1") X(W2, "att.w2")                                \
    X(A0, "att.a0") X(A1, "att.a1") X(A2, "att.a2")                                \
    X(V0, "att.v0") X(V1, "att.v1") X(V2, "att.v2")                                \
    X(G1, "att.g1") X(G2, "att.g2")                                                 \
    X(K_K, "att.k_k") X(K_A, "att.k_a") X(R_K, "att.r_k")                          \
    X(FFN_K, "ffn.key.weight") X(FFN_V, "ffn.value.weight")                        \
    X(FFN_R, "ffn.receptance.weight")                                               \
    X(FFN_MIX_K, "ffn.time_mix_k") X(FFN_MIX_R, "ffn.time_mix_r")                  \
    X(FFN_MAA_K, "ffn.time_maa_k") X(FFN_MAA_R, "ffn.time_maa_r")                  \
    X(FFN_X_K, "ffn.x_k")

#define RWKVX_SLOT_ENUM(slot, name) RWKVX_##slot,
enum rwkvx_global_slot { RWKVX_GLOBAL_SLOTS(RWKVX_SLOT_ENUM) RWKVX_N_GLOBAL_SLOTS };
enum rwkvx_layer_slot { RWKVX_LAYER_SLOTS(RWKVX_SLOT_ENUM) RWKVX_N_LAYER_SLOTS };
#undef RWKVX_SLOT_ENUM

extern const char *const rwkvx_global_slot_names[RWKVX_N_GLOBAL_SLOTS];
extern const char *const rwkvx_layer_slot_names[RWKVX_N_LAYER_SLOTS];

typedef struct rwkvx_layer {
    rwkvx_tensor t[RWKVX_N_LAYER_SLOTS];
} rwkvx_layer;

struct rwkvx_pool;

typedef struct rwkvx_model {
    int32_t arch;
    int32_t n_vocab, n_embd, n_layer, n_ffn, n_head, head_size;
    float group_norm_eps; /* of the v5+ ln_x group norm: 64e-5 officially, 1e-5 in rwkv.cpp's v5 */
    rwkvx_tensor globals[RWKVX_N_GLOBAL_SLOTS];
    rwkvx_layer *layers; /* n_layer entries, owned by the caller */
    /* Threads for matrix products (pool.h; NULL: the calling thread only), and the
     * size (weight bytes x tokens) under which a product is not worth splitting. */
    struct rwkvx_pool *pool;
    int64_t parallel_min_bytes;
} rwkvx_model;

enum rwkvx_status {
    RWKVX_OK = 0,
    RWKVX_ERR_ALLOC = 1,      /* out of memory for scratch buffers */
    RWKVX_ERR_TOKEN = 2,      /* a token id outside [0, n_vocab) */
    RWKVX_ERR_ARGUMENT = 3,   /* bad layer range, T <= 0, ... */
};

/* Which logits a forward call computes. NONE skips ln_out and the head entirely. */
enum rwkvx_logits { RWKVX_LOGITS_NONE = 0, RWKVX_LOGITS_LAST = 1, RWKVX_LOGITS_ALL = 2 };

/* Floats of state per layer: v4 [ffn_xx, att_xx, aa, bb, pp]; v5+ [ffn_xx, att_xx, heads (C*S)]. */
size_t rwkvx_state_floats_per_layer(const rwkvx_model *m);

/* Initial state of all layers (v4: pp = -1e30, everything else 0). */
void rwkvx_init_state(const rwkvx_model *m, float *state);

/* tokens[T] -> state updated in place; logits [T or 1][n_vocab] unless NONE.
 * Runs all layers; long sequences are processed in chunks internally with
 * results identical to one token at a time. */
int rwkvx_forward(const rwkvx_model *m, const int32_t *tokens, int64_t n_tokens,
                  float *state, float *logits, int logits_mode);

/* One token for each of n_seq independent sequences (a batch): tokens[b] follows
 * states[b] (each [state floats], updated in place; all distinct buffers).
 * Weights are read once for all rows; every output is bit-identical to
 * rwkvx_forward of that token alone on that state. logits: [n_seq][n_vocab],
 * or NULL to skip ln_out and the head. */
int rwkvx_forward_batch(const rwkvx_model *m, const int32_t *tokens, int64_t n_seq,
                        float *const *states, float *logits);

/* The pieces, for callers that place segments of layers elsewhere. */
int rwkvx_embed(const rwkvx_model *m, const int32_t *tokens, int64_t n_tokens, float *x);
int rwkvx_run_layers(const rwkvx_model *m, int32_t layer_begin, int32_t layer_end,
                     float *x, float *v_first, int64_t n_tokens, float *state);
int rwkvx_head(const rwkvx_model *m, const float *x, int64_t n_tokens, float *logits);

#endif /* RWKVX_H */
