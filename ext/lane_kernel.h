/* A GF(2^8) matrix kernel that resilfs._copy's lane can run beside its copies.
 *
 * resilfs._isal fills one per Tables object (ISA-L's ec_encode_data and its expanded
 * tables) and hands it to resilfs._copy in a PyCapsule named RESILFS_KERNEL_CAPSULE, so
 * the copy extension runs encodes and decodes on its helper thread without linking ISA-L.
 * ``fn(len, k, rows, tables, sources, outputs)`` writes ``rows`` outputs of ``len`` bytes
 * from ``k`` sources; it is byte-position-wise, so any byte range of the buffers can be
 * computed on its own. Never touches Python objects.
 */
#ifndef RESILFS_LANE_KERNEL_H
#define RESILFS_LANE_KERNEL_H

#define RESILFS_KERNEL_CAPSULE "resilfs.lane_kernel"
#define RESILFS_MAX_CHUNKS 256  /* k and rows are at most 255 */

typedef void (*resilfs_kernel_fn)(int len, int k, int rows, unsigned char *tables,
                                  unsigned char **sources, unsigned char **outputs);

typedef struct {
    resilfs_kernel_fn fn;
    unsigned char *tables;
    int k, rows;
} resilfs_kernel_t;

#endif
