/* Open-addressing hash map with backward-shift deletion. See hmap.h. */
#include "hmap.h"

#include <stdlib.h>
#include <string.h>

#define INITIAL_CAPACITY 16u

static uint64_t mix(uint64_t h) {
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

static uint64_t hash_key(const sfu_hmap *m, const uint8_t *key) {
    uint64_t h = m->seed;
    uint64_t w;
    uint32_t i;
    for (i = 0; i < m->keylen; i += 8) {
        memcpy(&w, key + i, 8);
        h = mix(h ^ w) + i;
    }
    return h | 1u; /* never 0 */
}

int sfu_hmap_init(sfu_hmap *m, uint32_t keylen, uint64_t seed) {
    memset(m, 0, sizeof(*m));
    if (keylen == 0 || keylen % 8 != 0 || keylen > SFU_HMAP_KEY_MAX) {
        return -1;
    }
    m->slots = calloc(INITIAL_CAPACITY, sizeof(sfu_hslot));
    if (m->slots == NULL) {
        return -1;
    }
    m->mask = INITIAL_CAPACITY - 1;
    m->keylen = keylen;
    m->seed = mix(seed ^ 0x9e3779b97f4a7c15ULL);
    return 0;
}

void sfu_hmap_free(sfu_hmap *m) {
    free(m->slots);
    m->slots = NULL;
    m->count = 0;
    m->mask = 0;
}

static sfu_hslot *find(const sfu_hmap *m, const uint8_t *key, uint64_t h) {
    uint32_t i = (uint32_t)h & m->mask;
    for (;;) {
        sfu_hslot *s = &m->slots[i];
        if (s->value == NULL) {
            return NULL;
        }
        if (s->hash == h && memcmp(s->key, key, m->keylen) == 0) {
            return s;
        }
        i = (i + 1) & m->mask;
    }
}

void *sfu_hmap_get(const sfu_hmap *m, const void *key) {
    sfu_hslot *s;
    if (m->slots == NULL || m->count == 0) {
        return NULL;
    }
    s = find(m, key, hash_key(m, key));
    return s ? s->value : NULL;
}

static void place(sfu_hslot *slots, uint32_t mask, const sfu_hslot *src) {
    uint32_t i = (uint32_t)src->hash & mask;
    while (slots[i].value != NULL) {
        i = (i + 1) & mask;
    }
    slots[i] = *src;
}

static int grow(sfu_hmap *m) {
    uint32_t cap = (m->mask + 1) * 2;
    uint32_t i;
    sfu_hslot *slots;
    if (cap == 0) {
        return -1;
    }
    slots = calloc(cap, sizeof(sfu_hslot));
    if (slots == NULL) {
        return -1;
    }
    for (i = 0; i <= m->mask; i++) {
        if (m->slots[i].value != NULL) {
            place(slots, cap - 1, &m->slots[i]);
        }
    }
    free(m->slots);
    m->slots = slots;
    m->mask = cap - 1;
    return 0;
}

int sfu_hmap_put(sfu_hmap *m, const void *key, void *value) {
    uint64_t h;
    sfu_hslot *s;
    sfu_hslot fresh;
    if (m->slots == NULL || value == NULL) {
        return -1;
    }
    h = hash_key(m, key);
    s = find(m, key, h);
    if (s != NULL) {
        s->value = value;
        return 0;
    }
    if ((m->count + 1) * 2 > m->mask + 1 && grow(m) != 0) {
        return -1;
    }
    memset(&fresh, 0, sizeof(fresh));
    fresh.hash = h;
    fresh.value = value;
    memcpy(fresh.key, key, m->keylen);
    place(m->slots, m->mask, &fresh);
    m->count++;
    return 0;
}

void *sfu_hmap_del(sfu_hmap *m, const void *key) {
    sfu_hslot *s;
    void *old;
    uint32_t hole, i, home;
    if (m->slots == NULL || m->count == 0) {
        return NULL;
    }
    s = find(m, key, hash_key(m, key));
    if (s == NULL) {
        return NULL;
    }
    old = s->value;
    hole = (uint32_t)(s - m->slots);
    i = hole;
    /* Shift back every following entry whose home slot does not lie in (hole, i]. */
    for (;;) {
        i = (i + 1) & m->mask;
        if (m->slots[i].value == NULL) {
            break;
        }
        home = (uint32_t)m->slots[i].hash & m->mask;
        if (((i - home) & m->mask) >= ((i - hole) & m->mask)) {
            m->slots[hole] = m->slots[i];
            hole = i;
        }
    }
    memset(&m->slots[hole], 0, sizeof(sfu_hslot));
    m->count--;
    return old;
}
