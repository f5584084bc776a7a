/*
 * seedswarm CPU kernel: Philox4x32-10 Rademacher signs fused with the state update.
 *
 *   n[i] += sum_r steps[r][t] * z_r[i],   z_r[i] = +1 or -1 from Philox under seeds[r]
 *   w[i]  = (float)n[i] * scale_t
 *
 * for the elements of sign blocks [block_begin, block_end) of a buffer of whole blocks, each
 * block belonging to one tensor t (model/layout.py). The layout is
 * docs/PROTOCOL.md's: block b of tensor t is Philox(key = seed, counter = (b, t, 0, 0)); bit j
 * (LSB first) of word k gives element 128*b + 32*k + j, 0 meaning +1.
 *
 * n is the int64 state of the elements in grid steps and w their fp32 weights (model/grid.py,
 * docs/PROTOCOL.md section 5). The steps are whole numbers of grid steps, summed in int32 (a
 * batch keeps sum_r |steps| < 2**24, model/layout.py), added to n with two's-complement
 * wrap-around (done in uint64: defined C), and w is rewritten from n: int64 to the nearest
 * float, ties to even (the default rounding mode; the tests check it against an integer
 * reference), times a power of two, which is exact. So the result does not depend on the order
 * of records, the batching or the compiler, for any run length. The GIL is released, so
 * Python threads can run disjoint block ranges in parallel. Everything is plain C that GCC
 * vectorises; target_clones builds x86-64-v4 (AVX-512 with DQ, whose vcvtqq2ps converts int64
 * to float in vectors, rounding to nearest even as the scalar conversion does) and AVX2
 * variants, picked at load time.
 *
 * lowrank_range: the rank-1 directions of a matrix tensor (docs/PROTOCOL.md section 4):
 *
 *   N[i][j] += sum_r s_r * a_r[i] * b_r[j],   W[i][j] = (float)N[i][j] * scale,   a_r, b_r in {-1,+1} from Philox streams
 *                                                       3 (rows) and 4 (columns) under seeds[r]
 *
 * is the integer matrix product A diag(s) B^T, computed exactly in int32 by the "four
 * Russians" method: records go in groups of G = 8; for a group and a tile of NT columns, a
 * table T[p][j] = sum_k (-1)^(bit k of p) * s_k * b_k[j] holds all 256 sign patterns a row
 * can have (built with one vector add per entry), and each row adds the entry its own pattern
 * of a-signs selects. That is about (256 + rows) / (8 * rows) adds per element and record
 * instead of a multiply-add, and the weights are read and written once per call. Every
 * partial sum is bounded by sum_r |s_r| < 2**24 (model/layout.py exact_batches), so int32 is
 * exact and the result cannot depend on the order or grouping of records.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 128
#define TILE_BLOCKS 32 /* 4096 elements: the int32 accumulator tile is 16 KiB, in L1 */

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#define SS_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define SS_CLONES
#endif

static inline void philox4x32_10(uint32_t k0, uint32_t k1, uint32_t c0, uint32_t c1,
                                 uint32_t c2, uint32_t c3, uint32_t out[4]) {
    for (int r = 0; r < 10; r++) {
        if (r) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        uint64_t p0 = (uint64_t)0xD2511F53u * c0;
        uint64_t p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

/* n += acc (wrapping), w = fp32(n) * scale, for count elements. */
static inline void commit(int64_t *restrict np, float *restrict wp, const int32_t *restrict ap,
                          int64_t count, float scale) {
    for (int64_t i = 0; i < count; i++) {
        int64_t v = (int64_t)((uint64_t)np[i] + (uint64_t)(int64_t)ap[i]);
        np[i] = v;
        wp[i] = (float)v * scale;
    }
}

/* acc[0..127] += s * z for one block: the hot loop, vectorised by the compiler. */
static inline void add_block(int32_t *restrict acc, const uint32_t words[4], int32_t s) {
    for (int k = 0; k < 4; k++) {
        uint32_t x = words[k];
        int32_t *a = acc + 32 * k;
        for (int j = 0; j < 32; j++) {
            int32_t m = -(int32_t)((x >> j) & 1u); /* 0 or -1 */
            a[j] += (s ^ m) - m;                   /* s or -s */
        }
    }
}

/*
 * The packed form (model/layout.py): all trainable tensors in one padded buffer of whole
 * blocks; block b belongs to tensor block_tensor[b] as its block block_local[b]. steps is an
 * R x n_tensors row-major matrix (a record moves each tensor by its own number of grid steps)
 * and scales[t] is tensor t's grid step. One call covers every tensor: one pass over memory.
 * The Philox counter names tensor id_base + t (id_base is 0 for the packed buffer, and the
 * tensor's id when a single tensor is passed as a one-column layout).
 */
SS_CLONES
static void accumulate_flat_range(float *restrict w, int64_t *restrict n, int64_t n_elements,
                                  const int32_t *block_tensor, const int32_t *block_local,
                                  uint32_t id_base, const float *scales, int64_t n_tensors,
                                  const uint64_t *seeds, const int32_t *steps, int64_t nrec,
                                  int64_t block_begin, int64_t block_end) {
    int32_t acc[TILE_BLOCKS * BLOCK];
    uint32_t words[4];
    for (int64_t b0 = block_begin; b0 < block_end; b0 += TILE_BLOCKS) {
        int64_t nb = block_end - b0 < TILE_BLOCKS ? block_end - b0 : TILE_BLOCKS;
        memset(acc, 0, sizeof(int32_t) * (size_t)(nb * BLOCK));
        for (int64_t r = 0; r < nrec; r++) {
            uint32_t k0 = (uint32_t)seeds[r], k1 = (uint32_t)(seeds[r] >> 32);
            const int32_t *row = steps + r * n_tensors;
            for (int64_t b = 0; b < nb; b++) {
                int32_t t = block_tensor[b0 + b];
                int32_t s = row[t];
                if (s == 0) continue;
                philox4x32_10(k0, k1, (uint32_t)block_local[b0 + b], id_base + (uint32_t)t, 0u,
                              0u, words);
                add_block(acc + b * BLOCK, words, s);
            }
        }
        for (int64_t b = 0; b < nb; b++) {
            float scale = scales[block_tensor[b0 + b]];
            int64_t first = (b0 + b) * BLOCK;
            int64_t count = n_elements - first < BLOCK ? n_elements - first : BLOCK;
            commit(n + first, w + first, acc + b * BLOCK, count, scale);
        }
    }
}

#define LR_GROUP 8
#define LR_PATTERNS (1 << LR_GROUP)
#define LR_NT 32          /* columns per tile: a table is 256 x 32 int32 = 32 KiB, in L1 */
#define LR_ROWS 1024      /* rows per accumulator block: 1024 x 32 int32 = 128 KiB, in L2 */

/* bits[r * words + w]: the 32-bit words of stream `stream` for elements 0..n-1 of record r. */
static void stream_bits(uint32_t *bits, int64_t words, const uint64_t *seeds, int64_t nrec,
                        uint32_t tensor_id, uint32_t stream, int64_t first_block,
                        int64_t n_blocks) {
    uint32_t out[4];
    for (int64_t r = 0; r < nrec; r++) {
        uint32_t k0 = (uint32_t)seeds[r], k1 = (uint32_t)(seeds[r] >> 32);
        for (int64_t b = 0; b < n_blocks; b++) {
            philox4x32_10(k0, k1, (uint32_t)(first_block + b), tensor_id, 0u, stream, out);
            for (int k = 0; k < 4; k++) {
                int64_t w = 4 * b + k;
                if (w < words) bits[r * words + w] = out[k];
            }
        }
    }
}

SS_CLONES
static void lr_tile(int32_t *restrict acc, const uint8_t *pat, int64_t nrows,
                    int32_t *restrict table, const int32_t *restrict sb) {
    /* sb: LR_GROUP x LR_NT values s_k * b_k[j]; table: LR_PATTERNS x LR_NT */
    for (int j = 0; j < LR_NT; j++) {
        int32_t t0 = 0;
        for (int k = 0; k < LR_GROUP; k++) t0 += sb[k * LR_NT + j];
        table[j] = t0;
    }
    for (int p = 1; p < LR_PATTERNS; p++) {
        int k = __builtin_ctz((unsigned)p);
        const int32_t *prev = table + (p & (p - 1)) * LR_NT;
        const int32_t *s2 = sb + k * LR_NT;
        int32_t *cur = table + p * LR_NT;
        for (int j = 0; j < LR_NT; j++) cur[j] = prev[j] - 2 * s2[j];
    }
    for (int64_t i = 0; i < nrows; i++) {
        const int32_t *t = table + (int64_t)pat[i] * LR_NT;
        int32_t *a = acc + i * LR_NT;
        for (int j = 0; j < LR_NT; j++) a[j] += t[j];
    }
}

/*
 * Rows [row_begin, row_end) of a row-major rows x cols matrix (state n, weights w); steps[r] is record r's
 * grid steps for this tensor (records with 0 steps may be passed; they add nothing).
 */
static int lowrank_range(float *w, int64_t *n, int64_t rows, int64_t cols, int64_t row_begin,
                         int64_t row_end, uint32_t tensor_id, float scale,
                         const uint64_t *seeds, const int32_t *steps, int64_t nrec) {
    int64_t ngroups = (nrec + LR_GROUP - 1) / LR_GROUP;
    int64_t cwords = (cols + 31) / 32, cblocks = (cols + BLOCK - 1) / BLOCK;
    int64_t first_rb = row_begin / BLOCK, last_rb = (row_end + BLOCK - 1) / BLOCK;
    int64_t rwords = (last_rb - first_rb) * 4;
    uint32_t *bbits = malloc(sizeof(uint32_t) * (size_t)(nrec * cwords + 1));
    uint32_t *abits = malloc(sizeof(uint32_t) * (size_t)(nrec * rwords + 1));
    uint8_t *pat = malloc((size_t)(ngroups * LR_ROWS + 1));
    int32_t *acc = malloc(sizeof(int32_t) * (size_t)(LR_ROWS * LR_NT));
    int32_t *table = malloc(sizeof(int32_t) * LR_PATTERNS * LR_NT);
    int32_t *sb = malloc(sizeof(int32_t) * LR_GROUP * LR_NT);
    if (!bbits || !abits || !pat || !acc || !table || !sb) {
        free(bbits); free(abits); free(pat); free(acc); free(table); free(sb);
        return -1;
    }
    stream_bits(bbits, cwords, seeds, nrec, tensor_id, 4u, 0, cblocks);
    stream_bits(abits, rwords, seeds, nrec, tensor_id, 3u, first_rb, last_rb - first_rb);
    for (int64_t r0 = row_begin; r0 < row_end; r0 += LR_ROWS) {
        int64_t nrows = row_end - r0 < LR_ROWS ? row_end - r0 : LR_ROWS;
        /* pat[g * LR_ROWS + i]: bit k = the a-sign bit of record 8g+k at row r0+i */
        memset(pat, 0, (size_t)(ngroups * LR_ROWS));
        for (int64_t r = 0; r < nrec; r++) {
            const uint32_t *ab = abits + r * rwords;
            uint8_t *pg = pat + (r / LR_GROUP) * LR_ROWS;
            int sh = (int)(r % LR_GROUP);
            for (int64_t i = 0; i < nrows; i++) {
                int64_t e = r0 + i - first_rb * BLOCK;
                pg[i] |= (uint8_t)(((ab[e >> 5] >> (e & 31)) & 1u) << sh);
            }
        }
        for (int64_t c0 = 0; c0 < cols; c0 += LR_NT) {
            int64_t nc = cols - c0 < LR_NT ? cols - c0 : LR_NT;
            memset(acc, 0, sizeof(int32_t) * (size_t)(nrows * LR_NT));
            for (int64_t g = 0; g < ngroups; g++) {
                int any = 0;
                for (int k = 0; k < LR_GROUP; k++) {
                    int64_t r = g * LR_GROUP + k;
                    int32_t s = r < nrec ? steps[r] : 0;
                    any |= s != 0;
                    const uint32_t *bb = bbits + (r < nrec ? r : 0) * cwords;
                    for (int j = 0; j < LR_NT; j++) {
                        int64_t c = c0 + j;
                        int32_t m = c < cols ? -(int32_t)((bb[c >> 5] >> (c & 31)) & 1u) : 0;
                        sb[k * LR_NT + j] = c < cols ? (s ^ m) - m : 0;
                    }
                }
                if (any) lr_tile(acc, pat + g * LR_ROWS, nrows, table, sb);
            }
            for (int64_t i = 0; i < nrows; i++) {
                int64_t at = (r0 + i) * cols + c0;
                commit(n + at, w + at, acc + i * LR_NT, nc, scale);
            }
        }
    }
    free(bbits); free(abits); free(pat); free(acc); free(table); free(sb);
    return 0;
}

/* signs(out_ptr, n, tensor_id, seed, block_begin, block_end): int8 z values, for tests. */
static void signs_range(int8_t *out, int64_t n, uint32_t tensor_id, uint64_t seed,
                        int64_t block_begin, int64_t block_end) {
    uint32_t words[4];
    for (int64_t b = block_begin; b < block_end; b++) {
        philox4x32_10((uint32_t)seed, (uint32_t)(seed >> 32), (uint32_t)b, tensor_id, 0u, 0u,
                      words);
        for (int i = 0; i < BLOCK; i++) {
            int64_t e = b * BLOCK + i;
            if (e >= n) return;
            out[e] = (int8_t)(1 - 2 * (int)((words[i >> 5] >> (i & 31)) & 1u));
        }
    }
}

static PyObject *py_accumulate_flat(PyObject *self, PyObject *args) {
    unsigned long long w_ptr, n_ptr, bt_ptr, bl_ptr, sc_ptr;
    long long n_elements, id_base, n_tensors, block_begin, block_end;
    Py_buffer seeds, steps;
    if (!PyArg_ParseTuple(args, "KKLKKLKLy*y*LL", &w_ptr, &n_ptr, &n_elements, &bt_ptr, &bl_ptr,
                          &id_base, &sc_ptr, &n_tensors, &seeds, &steps, &block_begin,
                          &block_end))
        return NULL;
    int64_t nrec = seeds.len / 8;
    if (seeds.len != nrec * 8 || steps.len != nrec * n_tensors * 4 || n_tensors < 1 ||
        n_elements < 0 || id_base < 0 || id_base > 0xFFFFFFFFLL || block_begin < 0 || block_end > (n_elements + BLOCK - 1) / BLOCK ||
        block_begin > block_end) {
        PyBuffer_Release(&seeds);
        PyBuffer_Release(&steps);
        PyErr_SetString(PyExc_ValueError, "accumulate_flat: inconsistent arguments");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    accumulate_flat_range((float *)(uintptr_t)w_ptr, (int64_t *)(uintptr_t)n_ptr, n_elements,
                          (const int32_t *)(uintptr_t)bt_ptr,
                          (const int32_t *)(uintptr_t)bl_ptr, (uint32_t)id_base,
                          (const float *)(uintptr_t)sc_ptr,
                          n_tensors, (const uint64_t *)seeds.buf, (const int32_t *)steps.buf,
                          nrec, block_begin, block_end);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&seeds);
    PyBuffer_Release(&steps);
    Py_RETURN_NONE;
}

static PyObject *py_lowrank(PyObject *self, PyObject *args) {
    unsigned long long w_ptr, n_ptr;
    long long rows, cols, row_begin, row_end, tensor_id;
    float scale;
    Py_buffer seeds, steps;
    if (!PyArg_ParseTuple(args, "KKLLLLLfy*y*", &w_ptr, &n_ptr, &rows, &cols, &row_begin,
                          &row_end, &tensor_id, &scale, &seeds, &steps))
        return NULL;
    int64_t nrec = seeds.len / 8;
    if (seeds.len != nrec * 8 || steps.len != nrec * 4 || rows < 0 || cols < 0 ||
        row_begin < 0 || row_end > rows || row_begin > row_end || tensor_id < 0 ||
        tensor_id > 0xFFFFFFFFLL) {
        PyBuffer_Release(&seeds);
        PyBuffer_Release(&steps);
        PyErr_SetString(PyExc_ValueError, "lowrank: inconsistent arguments");
        return NULL;
    }
    int rc = 0;
    if (nrec > 0 && cols > 0 && row_end > row_begin) {
        Py_BEGIN_ALLOW_THREADS
        rc = lowrank_range((float *)(uintptr_t)w_ptr, (int64_t *)(uintptr_t)n_ptr, rows, cols,
                           row_begin, row_end,
                           (uint32_t)tensor_id, scale, (const uint64_t *)seeds.buf,
                           (const int32_t *)steps.buf, nrec);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&seeds);
    PyBuffer_Release(&steps);
    if (rc) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *py_signs(PyObject *self, PyObject *args) {
    unsigned long long out_ptr, seed;
    long long n, tensor_id;
    if (!PyArg_ParseTuple(args, "KLLK", &out_ptr, &n, &tensor_id, &seed)) return NULL;
    if (n < 0 || tensor_id < 0 || tensor_id > 0xFFFFFFFFLL) {
        PyErr_SetString(PyExc_ValueError, "signs: inconsistent arguments");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    signs_range((int8_t *)(uintptr_t)out_ptr, n, (uint32_t)tensor_id, seed, 0,
                (n + BLOCK - 1) / BLOCK);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"accumulate_flat", py_accumulate_flat, METH_VARARGS,
     "accumulate_flat(w_ptr, n_ptr, n_elements, block_tensor_ptr, block_local_ptr, id_base, "
     "scales_ptr, n_tensors, seeds_u64le, steps_i32le_RxT, block_begin, block_end)"},
    {"signs", py_signs, METH_VARARGS, "signs(out_ptr, n, tensor_id, seed): int8 +-1 values"},
    {"lowrank", py_lowrank, METH_VARARGS,
     "lowrank(w_ptr, n_ptr, rows, cols, row_begin, row_end, tensor_id, scale, seeds_u64le, "
     "steps_i32le): n += sum_r steps[r] * a_r b_r^T, w = fp32(n) * scale, over rows "
     "[row_begin, row_end)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_zokernel",
                                    "Fused Philox sign generation and apply (CPU).", -1,
                                    methods};

PyMODINIT_FUNC PyInit__zokernel(void) { return PyModule_Create(&module); }
