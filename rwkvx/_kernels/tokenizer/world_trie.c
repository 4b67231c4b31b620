/* Byte trie for the RWKV "World" tokenizer (see world_trie.h). */
#include "world_trie.h"

#include <stdlib.h>
#include <string.h>

/* Nodes with more children than this get a dense 256-entry table. In the World
 * vocabulary ~80% of inner nodes have one child and only ~1% have more than 16,
 * so dense tables for those few cost well under 1 MB and serve the hot nodes
 * near the root in one load. */
#define RWKVX_TRIE_DENSE_MIN_CHILDREN 8

/* Child index 0 means "no child": the root (node 0) is never anybody's child. */
#define RWKVX_TRIE_NO_CHILD 0
#define RWKVX_TRIE_NO_TOKEN (-1)

typedef struct {
    int32_t token;       /* token id whose bytes end at this node, or RWKVX_TRIE_NO_TOKEN */
    int32_t dense;       /* index of this node's 256-entry child table, or -1 */
    uint32_t first_edge; /* otherwise: children are edges [first_edge, first_edge + n_edges) */
    uint32_t n_edges;    /* sorted by byte */
} rwkvx_trie_node;

struct rwkvx_world_trie {
    rwkvx_trie_node *nodes;
    size_t n_nodes;
    uint8_t *edge_byte;   /* [n_nodes - 1] */
    int32_t *edge_child;  /* [n_nodes - 1] */
    int32_t *dense;       /* [n_dense * 256], RWKVX_TRIE_NO_CHILD where absent */
    size_t n_dense;
};

/* The trie while it is built: each node's children as a linked list. */
typedef struct {
    int32_t *first_child;
    int32_t *next_sibling;
    uint8_t *label;       /* byte on the edge into the node */
    int32_t *token;
    size_t n_nodes;
} rwkvx_trie_builder;

static void builder_free(rwkvx_trie_builder *b) {
    free(b->first_child);
    free(b->next_sibling);
    free(b->label);
    free(b->token);
}

static int builder_init(rwkvx_trie_builder *b, size_t max_nodes) {
    b->first_child = malloc(max_nodes * sizeof(int32_t));
    b->next_sibling = malloc(max_nodes * sizeof(int32_t));
    b->label = malloc(max_nodes);
    b->token = malloc(max_nodes * sizeof(int32_t));
    if (!b->first_child || !b->next_sibling || !b->label || !b->token) {
        builder_free(b);
        return 0;
    }
    b->first_child[0] = RWKVX_TRIE_NO_CHILD;
    b->next_sibling[0] = RWKVX_TRIE_NO_CHILD;
    b->label[0] = 0;
    b->token[0] = RWKVX_TRIE_NO_TOKEN;
    b->n_nodes = 1;
    return 1;
}

/* The child of node along byte, created if missing. The caller sized the
 * arrays for the worst case (one node per key byte), so this cannot overflow. */
static int32_t builder_child(rwkvx_trie_builder *b, int32_t node, uint8_t byte) {
    for (int32_t c = b->first_child[node]; c != RWKVX_TRIE_NO_CHILD; c = b->next_sibling[c]) {
        if (b->label[c] == byte) return c;
    }
    int32_t c = (int32_t)b->n_nodes++;
    b->first_child[c] = RWKVX_TRIE_NO_CHILD;
    b->next_sibling[c] = b->first_child[node];
    b->first_child[node] = c;
    b->label[c] = byte;
    b->token[c] = RWKVX_TRIE_NO_TOKEN;
    return c;
}

static size_t builder_child_count(const rwkvx_trie_builder *b, int32_t node) {
    size_t n = 0;
    for (int32_t c = b->first_child[node]; c != RWKVX_TRIE_NO_CHILD; c = b->next_sibling[c]) n++;
    return n;
}

/* Copies the builder into the compact read-only layout. */
static rwkvx_world_trie *builder_freeze(const rwkvx_trie_builder *b) {
    rwkvx_world_trie *t = calloc(1, sizeof(*t));
    if (!t) return NULL;
    t->n_nodes = b->n_nodes;
    size_t n_edges = b->n_nodes - 1;
    for (size_t i = 0; i < b->n_nodes; i++) {
        if (builder_child_count(b, (int32_t)i) > RWKVX_TRIE_DENSE_MIN_CHILDREN) t->n_dense++;
    }
    t->nodes = malloc(b->n_nodes * sizeof(rwkvx_trie_node));
    t->edge_byte = malloc(n_edges ? n_edges : 1);
    t->edge_child = malloc((n_edges ? n_edges : 1) * sizeof(int32_t));
    t->dense = calloc(t->n_dense ? t->n_dense * 256 : 1, sizeof(int32_t));
    if (!t->nodes || !t->edge_byte || !t->edge_child || !t->dense) {
        rwkvx_world_trie_free(t);
        return NULL;
    }

    size_t next_edge = 0, next_dense = 0;
    for (size_t i = 0; i < b->n_nodes; i++) {
        rwkvx_trie_node *node = &t->nodes[i];
        node->token = b->token[i];
        node->first_edge = (uint32_t)next_edge;
        node->n_edges = 0;
        node->dense = -1;
        if (builder_child_count(b, (int32_t)i) > RWKVX_TRIE_DENSE_MIN_CHILDREN) {
            int32_t *table = &t->dense[next_dense * 256];
            node->dense = (int32_t)next_dense++;
            for (int32_t c = b->first_child[i]; c != RWKVX_TRIE_NO_CHILD; c = b->next_sibling[c]) {
                table[b->label[c]] = c;
            }
            continue;
        }
        /* Insertion sort by byte into the edge list; these lists are short. */
        for (int32_t c = b->first_child[i]; c != RWKVX_TRIE_NO_CHILD; c = b->next_sibling[c]) {
            size_t j = next_edge + node->n_edges++;
            while (j > next_edge && t->edge_byte[j - 1] > b->label[c]) {
                t->edge_byte[j] = t->edge_byte[j - 1];
                t->edge_child[j] = t->edge_child[j - 1];
                j--;
            }
            t->edge_byte[j] = b->label[c];
            t->edge_child[j] = c;
        }
        next_edge += node->n_edges;
    }
    return t;
}

rwkvx_world_trie *rwkvx_world_trie_build(const uint8_t *blob, const uint64_t *offsets,
                                         const int32_t *token_ids, size_t n_tokens,
                                         rwkvx_trie_status *status, size_t *bad_index) {
    *status = RWKVX_TRIE_OK;
    *bad_index = 0;
    /* A trie has at most one node per key byte, plus the root. Node indices are
     * int32, so refuse vocabularies whose total size could overflow them. */
    uint64_t total_bytes = n_tokens ? offsets[n_tokens] - offsets[0] : 0;
    if (total_bytes >= (uint64_t)INT32_MAX) {
        *status = RWKVX_TRIE_NO_MEMORY;
        return NULL;
    }
    rwkvx_trie_builder b;
    if (!builder_init(&b, (size_t)total_bytes + 1)) {
        *status = RWKVX_TRIE_NO_MEMORY;
        return NULL;
    }
    for (size_t i = 0; i < n_tokens; i++) {
        if (token_ids[i] < 0) {
            *status = RWKVX_TRIE_BAD_TOKEN_ID;
        } else if (offsets[i + 1] <= offsets[i]) {
            *status = RWKVX_TRIE_EMPTY_KEY;
        }
        if (*status != RWKVX_TRIE_OK) {
            *bad_index = i;
            builder_free(&b);
            return NULL;
        }
        int32_t node = 0;
        for (uint64_t k = offsets[i]; k < offsets[i + 1]; k++) node = builder_child(&b, node, blob[k]);
        if (b.token[node] != RWKVX_TRIE_NO_TOKEN) {
            *status = RWKVX_TRIE_DUPLICATE_KEY;
            *bad_index = i;
            builder_free(&b);
            return NULL;
        }
        b.token[node] = token_ids[i];
    }
    rwkvx_world_trie *t = builder_freeze(&b);
    builder_free(&b);
    if (!t) *status = RWKVX_TRIE_NO_MEMORY;
    return t;
}

void rwkvx_world_trie_free(rwkvx_world_trie *trie) {
    if (!trie) return;
    free(trie->nodes);
    free(trie->edge_byte);
    free(trie->edge_child);
    free(trie->dense);
    free(trie);
}

size_t rwkvx_world_trie_node_count(const rwkvx_world_trie *trie) {
    return trie->n_nodes;
}

static inline int32_t trie_child(const rwkvx_world_trie *t, const rwkvx_trie_node *node, uint8_t byte) {
    if (node->dense >= 0) return t->dense[(size_t)node->dense * 256 + byte];
    const uint32_t end = node->first_edge + node->n_edges;
    for (uint32_t e = node->first_edge; e < end; e++) {
        const uint8_t edge = t->edge_byte[e];
        if (edge == byte) return t->edge_child[e];
        if (edge > byte) break; /* sorted: the byte is not here */
    }
    return RWKVX_TRIE_NO_CHILD;
}

int64_t rwkvx_world_trie_encode(const rwkvx_world_trie *trie, const uint8_t *text, size_t len,
                                int32_t *out) {
    size_t pos = 0;
    int64_t n_out = 0;
    while (pos < len) {
        /* Walk as deep as the text allows, remembering the last node that ends a token. */
        const rwkvx_trie_node *node = &trie->nodes[0];
        int32_t best_token = RWKVX_TRIE_NO_TOKEN;
        size_t best_len = 0;
        for (size_t i = pos; i < len; i++) {
            const int32_t child = trie_child(trie, node, text[i]);
            if (child == RWKVX_TRIE_NO_CHILD) break;
            node = &trie->nodes[child];
            if (node->token != RWKVX_TRIE_NO_TOKEN) {
                best_token = node->token;
                best_len = i - pos + 1;
            }
        }
        if (best_token == RWKVX_TRIE_NO_TOKEN) return -(int64_t)pos - 1;
        out[n_out++] = best_token;
        pos += best_len;
    }
    return n_out;
}
