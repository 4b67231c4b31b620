/* Byte trie for the RWKV "World" tokenizer: greedy longest-match encoding.
 *
 * The alphabet is the 256 byte values. A node with many children keeps a dense
 * 256-entry child table (one load per byte); the many nodes with few children
 * keep a short sorted edge list instead, which keeps the World vocabulary's
 * ~116k nodes at a few MB rather than ~120 MB of dense tables.
 *
 * The trie is built once from the complete vocabulary and is read-only after
 * that, so one trie may be used by many threads at once.
 */
#ifndef RWKVX_WORLD_TRIE_H
#define RWKVX_WORLD_TRIE_H

#include <stddef.h>
#include <stdint.h>

typedef struct rwkvx_world_trie rwkvx_world_trie;

typedef enum {
    RWKVX_TRIE_OK = 0,
    RWKVX_TRIE_NO_MEMORY = 1,
    RWKVX_TRIE_EMPTY_KEY = 2,      /* a token has zero bytes */
    RWKVX_TRIE_DUPLICATE_KEY = 3,  /* two tokens have the same bytes */
    RWKVX_TRIE_BAD_TOKEN_ID = 4,   /* a token id is negative */
} rwkvx_trie_status;

/* Builds a trie of n_tokens keys. Key i is blob[offsets[i] .. offsets[i+1])
 * (offsets has n_tokens + 1 entries, non-decreasing) and maps to token_ids[i].
 * On failure returns NULL, sets *status and, when a key is at fault, sets
 * *bad_index to its index i. */
rwkvx_world_trie *rwkvx_world_trie_build(const uint8_t *blob, const uint64_t *offsets,
                                         const int32_t *token_ids, size_t n_tokens,
                                         rwkvx_trie_status *status, size_t *bad_index);

void rwkvx_world_trie_free(rwkvx_world_trie *trie);

/* Number of nodes, root included (for diagnostics and tests). */
size_t rwkvx_world_trie_node_count(const rwkvx_world_trie *trie);

/* Greedy longest-match encoding of text[0 .. len): at each position emit the
 * token whose bytes are the longest prefix of the remaining text.
 * out must hold len entries (every token consumes at least one byte).
 * Returns the number of tokens written, or -(pos + 1) if no token starts with
 * the byte at pos (impossible when all 256 single bytes are in the vocabulary). */
int64_t rwkvx_world_trie_encode(const rwkvx_world_trie *trie, const uint8_t *text, size_t len,
                                int32_t *out);

#endif
