/* XOR of N equal-length byte buffers: the kernel behind resilfs._xor (no Python.h).
 *
 * out = src[0] ^ src[1] ^ ... ^ src[n-1]        (accumulate == 0)
 * out ^= src[0] ^ src[1] ^ ... ^ src[n-1]       (accumulate != 0)
 *
 * One pass over memory: each 256-byte block is loaded from every source, combined in
 * registers and stored once, instead of n-1 passes of a two-operand XOR. GCC vector
 * extensions let -march=native pick AVX-512, AVX2 or SSE2 without intrinsics. Buffers may
 * be unaligned and may alias out (out may also be one of the sources). The tail after the
 * last whole block goes 8 bytes, then 1 byte at a time.
 */
#ifndef RESILFS_XOR_KERNEL_H
#define RESILFS_XOR_KERNEL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef uint64_t resilfs_v64 __attribute__((vector_size(64), aligned(1), may_alias));

#define RESILFS_XOR_BLOCK 256

static inline void resilfs_xor_into(unsigned char *out, unsigned char *const *src,
                                    size_t n, size_t len, int accumulate)
{
    size_t pos = 0, j;
    for (; pos + RESILFS_XOR_BLOCK <= len; pos += RESILFS_XOR_BLOCK) {
        resilfs_v64 a0, a1, a2, a3;
        const resilfs_v64 *s;
        if (accumulate) {
            s = (const resilfs_v64 *)(out + pos);
            a0 = s[0]; a1 = s[1]; a2 = s[2]; a3 = s[3];
            j = 0;
        } else {
            s = (const resilfs_v64 *)(src[0] + pos);
            a0 = s[0]; a1 = s[1]; a2 = s[2]; a3 = s[3];
            j = 1;
        }
        for (; j < n; j++) {
            s = (const resilfs_v64 *)(src[j] + pos);
            a0 ^= s[0]; a1 ^= s[1]; a2 ^= s[2]; a3 ^= s[3];
        }
        resilfs_v64 *d = (resilfs_v64 *)(out + pos);
        d[0] = a0; d[1] = a1; d[2] = a2; d[3] = a3;
    }
    for (; pos + 8 <= len; pos += 8) {
        uint64_t w, x;
        if (accumulate) {
            memcpy(&w, out + pos, 8);
            j = 0;
        } else {
            memcpy(&w, src[0] + pos, 8);
            j = 1;
        }
        for (; j < n; j++) {
            memcpy(&x, src[j] + pos, 8);
            w ^= x;
        }
        memcpy(out + pos, &w, 8);
    }
    for (; pos < len; pos++) {
        unsigned char b = accumulate ? out[pos] : 0;
        for (j = 0; j < n; j++)
            b ^= src[j][pos];
        out[pos] = b;
    }
}

#endif
