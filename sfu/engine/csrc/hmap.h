/*
 * A small open-addressing hash map for the forwarding engine: fixed-size byte keys (at most
 * SFU_HMAP_KEY_MAX bytes, zero-padded by the caller), non-NULL pointer values.
 *
 * Linear probing, load factor at most 1/2, backward-shift deletion (no tombstones), a per-map
 * random seed so that remote addresses cannot be chosen to collide. Lookups never allocate;
 * inserts allocate only when the table doubles. Not thread-safe: the engine's lock guards it.
 */
#ifndef SFU_ENGINE_HMAP_H
#define SFU_ENGINE_HMAP_H

#include <stddef.h>
#include <stdint.h>

#define SFU_HMAP_KEY_MAX 40

typedef struct {
    uint64_t hash;
    void *value; /* NULL: empty slot */
    uint8_t key[SFU_HMAP_KEY_MAX];
} sfu_hslot;

typedef struct {
    sfu_hslot *slots;
    uint32_t mask; /* capacity - 1 (capacity is a power of two) */
    uint32_t count;
    uint32_t keylen;
    uint64_t seed;
} sfu_hmap;

/* keylen must be a multiple of 8, at most SFU_HMAP_KEY_MAX. Returns 0, or -1 when out of memory. */
int sfu_hmap_init(sfu_hmap *m, uint32_t keylen, uint64_t seed);
void sfu_hmap_free(sfu_hmap *m);

void *sfu_hmap_get(const sfu_hmap *m, const void *key);
/* Insert or replace. Returns 0, or -1 when out of memory (the map is unchanged). */
int sfu_hmap_put(sfu_hmap *m, const void *key, void *value);
/* Remove; returns the old value or NULL. */
void *sfu_hmap_del(sfu_hmap *m, const void *key);

/* Iterate: for (i = 0; i <= m->mask; i++) if (m->slots[i].value) ... (no mutation meanwhile). */

#endif /* SFU_ENGINE_HMAP_H */
