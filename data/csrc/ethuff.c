/* A faster Huffman (entropy) decoder for baseline JPEGs, plugged into libjpeg-turbo in
 * place of its own: it produces the same coefficients, so IDCT, upsampling, colour
 * conversion, DCT scaling and cropping stay libjpeg's and the pixels stay bit-identical
 * (et-bench decode-check and the tests compare). At the low resolutions of the
 * curriculum, entropy decoding of the full-size file is most of a sample's cost.
 *
 * Why it is faster than jdhuff.c:
 * - the scan's bytes are un-stuffed (0xFF 0x00 -> 0xFF) once per restart segment with
 *   memchr, so the bit buffer refills without a branch: one unaligned 8-byte load;
 * - one table lookup on the next LOOK bits yields the run, the code and the coefficient
 *   value together, and for about half the lookups two consecutive (run, value) symbols;
 * - a block's end is a data-dependent branch only once per block.
 *
 * libjpeg reaches the entropy decoder through a module pointer (cinfo->entropy) whose
 * interface (jpegint.h, unchanged since libjpeg 6b) is mirrored below; jpegint.h itself is
 * not installed with the library. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jpeglib.h>
#include <jerror.h>

struct jpeg_entropy_decoder {
  void (*start_pass)(j_decompress_ptr cinfo);
  boolean (*decode_mcu)(j_decompress_ptr cinfo, JBLOCKROW *MCU_data);
  boolean insufficient_data;
};

struct jpeg_marker_reader {
  void (*reset_marker_reader)(j_decompress_ptr cinfo);
  int (*read_markers)(j_decompress_ptr cinfo);
  jpeg_marker_parser_method read_restart_marker;
};

#define LOOK 11
#define PAD 4096 /* zero bytes after a segment: more than one MCU of the longest codes */

/* Natural (row-major) position of the (k-1)-th zigzag coefficient, indexed by the zigzag
 * index k just past it (the decoder's count: one subtraction less per coefficient);
 * entries past 64 absorb the end-of-block store and, as in libjpeg, runs that overflow a
 * corrupt block. */
static const unsigned char natural[1 + 64 + 80] = {
  0,  0,  1,  8,  16, 9,  2,  3,  10, 17, 24, 32, 25, 18, 11, 4,  5,  12, 19, 26, 33, 40, 48,
  41, 34, 27, 20, 13, 6,  7,  14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23,
  30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
  63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63,
  63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63,
  63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63,
  63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63};

typedef struct {
  /* AC: one or two symbols of the next LOOK bits: bits 0-7 all bits they take, 8-15 the
   * first symbol's bits, 16-23 and 24-31 how far each moves the zigzag index (64 for
   * end-of-block, 0 when there is no second symbol), 32-47 and 48-63 their values (the
   * first repeated when there is no second). DC: bits 0-7 code + value bits, 16-31 the
   * difference. 0 when the code or its value does not fit in LOOK bits. */
  union {
    uint64_t ac[1 << LOOK];
    uint32_t dc[1 << LOOK]; /* DC entries need 32 bits: half the cache footprint */
  } fast;
  uint8_t look_len[1 << LOOK], look_sym[1 << LOOK]; /* codes of at most LOOK bits */
  int32_t maxcode[18], valoff[17];                    /* longer codes, as jdhuff.c */
  uint8_t huffval[256];
} et_htab;

typedef struct {
  struct jpeg_entropy_decoder pub; /* first: libjpeg sees only this */
  JOCTET *buf;                     /* the current segment, un-stuffed, then PAD zeros */
  size_t len, pos;                 /* bytes in the segment; next byte to load */
  uint64_t bits;                   /* left-aligned */
  unsigned n;                      /* valid bits in `bits` */
  int last_dc[MAX_COMPS_IN_SCAN];
  unsigned restarts_to_go;
  const et_htab *dct[D_MAX_BLOCKS_IN_MCU], *act[D_MAX_BLOCKS_IN_MCU];
} et_huff;

/* How far an AC symbol moves the zigzag index. A symbol of size 0 is the end of the block
 * (64) unless it is the run of 16 zeros (0xF0): baseline codes only 0x00, but libjpeg
 * reads any other (run, 0) a table may hold as an end-of-block too. */
static int advance(int sym) { return (sym & 15) ? (sym >> 4) + 1 : (sym == 0xF0 ? 16 : 64); }

static int extend(int v, int s) { return s == 0 ? 0 : (v < (1 << (s - 1)) ? v - (1 << s) + 1 : v); }

static void fill64(uint64_t *p, uint64_t v, int n) {
  while (n--) *p++ = v;
}
static void fill32(uint32_t *p, uint32_t v, int n) {
  while (n--) *p++ = v;
}

/* Builds the tables of one DHT table; returns 0 on a table libjpeg would reject. Codes
 * are canonical, so each (code, value bits) prefix owns one range of the LOOK-bit index
 * space and the tables are filled range by range. */
static int build(et_htab *t, const JHUFF_TBL *h, int ac) {
  int l, i, j, k = 0, code = 0, nshort = 0, end = 0;
  uint8_t sl[256], ss[256];
  int sc[256]; /* codes of at most LOOK bits, in code order: length, symbol, code */
  for (l = 1; l <= 16; l++) {
    int cnt = h->bits[l];
    t->valoff[l] = k - code;
    for (i = 0; i < cnt; i++, k++, code++) {
      if (k >= 256 || code >= (1 << l)) return 0;
      if (l <= LOOK) {
        sl[nshort] = (uint8_t)l;
        ss[nshort] = h->huffval[k];
        sc[nshort++] = code;
      }
    }
    t->maxcode[l] = cnt ? code - 1 : -1;
    code <<= 1;
  }
  t->maxcode[17] = 0x7fffffff;
  memcpy(t->huffval, h->huffval, 256);
  for (i = 0; i < nshort; i++) {
    int lo = sc[i] << (LOOK - sl[i]), cnt = 1 << (LOOK - sl[i]);
    memset(t->look_len + lo, sl[i], (size_t)cnt);
    memset(t->look_sym + lo, ss[i], (size_t)cnt);
    end = lo + cnt;
  }
  memset(t->look_len + end, 0, (size_t)((1 << LOOK) - end));
  memset(t->look_sym + end, 0, (size_t)((1 << LOOK) - end));
  if (ac)
    memset(t->fast.ac, 0, sizeof(t->fast.ac));
  else
    memset(t->fast.dc, 0, sizeof(t->fast.dc));
  for (i = 0; i < nshort; i++) {
    int sym = ss[i], size = ac ? sym & 15 : sym, used = sl[i] + size, rest = LOOK - used, v;
    int adv1 = advance(sym);
    if (used > LOOK || size > 15) continue; /* the slow path reads the value */
    for (v = 0; v < (1 << size); v++) {
      int v1 = extend(v, size), base = ((sc[i] << size) | v) << rest;
      if (!ac) {
        fill32(t->fast.dc + base, (uint32_t)used | ((uint32_t)(uint16_t)v1 << 16), 1 << rest);
        continue;
      }
      fill64(t->fast.ac + base,
             (uint64_t)used | ((uint64_t)used << 8) | ((uint64_t)adv1 << 16) |
                 ((uint64_t)(uint16_t)v1 << 32) | ((uint64_t)(uint16_t)v1 << 48),
             1 << rest);
      if (adv1 == 64) continue; /* nothing of this block follows an end-of-block */
      /* A second symbol whose code and value fit in the bits left over. */
      for (j = 0; j < nshort && sl[j] <= rest; j++) {
        int s2 = ss[j], z2 = s2 & 15, u2 = sl[j] + z2, w;
        int adv2 = advance(s2);
        if (u2 > rest) continue;
        for (w = 0; w < (1 << z2); w++) {
          int v2 = extend(w, z2), at = base + (((sc[j] << z2) | w) << (rest - u2));
          fill64(t->fast.ac + at,
                 (uint64_t)(used + u2) | ((uint64_t)used << 8) | ((uint64_t)adv1 << 16) |
                     ((uint64_t)adv2 << 24) | ((uint64_t)(uint16_t)v1 << 32) |
                     ((uint64_t)(uint16_t)v2 << 48),
                 1 << (rest - u2));
        }
      }
    }
  }
  return 1;
}

/* A segment of `len` bytes (already in buf), followed by PAD zeros, read from its start. */
static void start_segment(et_huff *e, size_t len) {
  e->len = len;
  memset(e->buf + len, 0, PAD);
  e->pos = 0;
  e->bits = 0;
  e->n = 0;
}

/* Copies the entropy-coded bytes from the source up to the next marker, un-stuffed, and
 * leaves the source at that marker for libjpeg's marker reader. */
static void load_segment(j_decompress_ptr cinfo, et_huff *e) {
  struct jpeg_source_mgr *src = cinfo->src;
  const JOCTET *p = src->next_input_byte, *end = p + src->bytes_in_buffer;
  JOCTET *out = e->buf;
  while (p < end) {
    const JOCTET *ff = (const JOCTET *)memchr(p, 0xFF, (size_t)(end - p));
    const JOCTET *q;
    if (!ff) {
      memcpy(out, p, (size_t)(end - p));
      out += end - p;
      p = end;
      break;
    }
    memcpy(out, p, (size_t)(ff - p));
    out += ff - p;
    q = ff + 1;
    while (q < end && *q == 0xFF) q++; /* fill bytes */
    if (q < end && *q == 0) {
      *out++ = 0xFF;
      p = q + 1;
    } else {
      p = ff; /* a marker (or the data ends): the segment ends here */
      break;
    }
  }
  start_segment(e, (size_t)(out - e->buf));
  src->bytes_in_buffer -= (size_t)(p - src->next_input_byte);
  src->next_input_byte = p;
}

/* This image's tables, built once each (≈ 5 µs for an AC table): most photos carry their
 * own optimised tables, so there is little to share between files. */
static const et_htab *table(j_decompress_ptr cinfo, const JHUFF_TBL *h, int ac) {
  et_htab *t = (et_htab *)(*cinfo->mem->alloc_large)((j_common_ptr)cinfo, JPOOL_IMAGE, sizeof(et_htab));
  if (!build(t, h, ac)) ERREXIT1(cinfo, JERR_BAD_HUFF_TABLE, 0);
  return t;
}

static void start_pass(j_decompress_ptr cinfo) {
  et_huff *e = (et_huff *)cinfo->entropy;
  const et_htab *dc[NUM_HUFF_TBLS] = {0}, *ac[NUM_HUFF_TBLS] = {0};
  int ci, b;
  for (ci = 0; ci < cinfo->comps_in_scan; ci++) {
    jpeg_component_info *comp = cinfo->cur_comp_info[ci];
    int d = comp->dc_tbl_no, a = comp->ac_tbl_no;
    JHUFF_TBL *hd = cinfo->dc_huff_tbl_ptrs[d], *ha = cinfo->ac_huff_tbl_ptrs[a];
    if (!hd || !ha) ERREXIT1(cinfo, JERR_NO_HUFF_TABLE, hd ? a : d);
    if (!dc[d]) dc[d] = table(cinfo, hd, 0);
    if (!ac[a]) ac[a] = table(cinfo, ha, 1);
    e->last_dc[ci] = 0;
  }
  for (b = 0; b < cinfo->blocks_in_MCU; b++) {
    jpeg_component_info *comp = cinfo->cur_comp_info[cinfo->MCU_membership[b]];
    e->dct[b] = dc[comp->dc_tbl_no];
    e->act[b] = ac[comp->ac_tbl_no];
  }
  e->restarts_to_go = cinfo->restart_interval;
  e->pub.insufficient_data = FALSE;
  load_segment(cinfo, e); /* the source is at the scan's first byte */
}

#define REFILL()                                                                        \
  do {                                                                                  \
    uint64_t w_;                                                                        \
    memcpy(&w_, buf + pos, 8);                                                          \
    bits |= __builtin_bswap64(w_) >> n;                                                 \
    pos += (63 - n) >> 3;                                                               \
    n |= 56;                                                                            \
  } while (0)

/* A code longer than LOOK bits, or one whose value does not fit: returns the symbol and
 * its code's length as (length << 8) | symbol, without consuming anything (the bit
 * buffer stays in registers in the caller). A code no table holds is corrupt data:
 * libjpeg warns, consumes 17 bits and reads it as symbol 0; so does this. */
static int slow_symbol(j_decompress_ptr cinfo, const et_htab *t, uint64_t bits) {
  unsigned idx = (unsigned)(bits >> (64 - LOOK)), l = t->look_len[idx];
  int code;
  if (l) return (int)(l << 8) | t->look_sym[idx];
  code = (int)(bits >> (64 - 16));
  for (l = LOOK + 1; l <= 16; l++)
    if ((code >> (16 - l)) <= t->maxcode[l])
      return (int)(l << 8) | t->huffval[(t->valoff[l] + (code >> (16 - l))) & 0xFF];
  WARNMS(cinfo, JWRN_HUFF_BAD_CODE);
  return 17 << 8;
}

static boolean process_restart(j_decompress_ptr cinfo, et_huff *e) {
  int ci;
  if (!(*cinfo->marker->read_restart_marker)(cinfo)) return FALSE;
  for (ci = 0; ci < cinfo->comps_in_scan; ci++) e->last_dc[ci] = 0;
  e->restarts_to_go = cinfo->restart_interval;
  /* As jdhuff.c: right after a marker that is not the expected restart the next segment
   * is empty, and the flag stays set so that no bogus pixels are produced. */
  if (cinfo->unread_marker == 0) {
    e->pub.insufficient_data = FALSE;
    load_segment(cinfo, e);
  } else {
    start_segment(e, 0);
  }
  return TRUE;
}

/* The decoder, compiled twice (below): with BMI2's flag-free shifts it is 4 % faster. */
static inline __attribute__((always_inline)) boolean decode_mcu_body(j_decompress_ptr cinfo,
                                                                     JBLOCKROW *MCU_data) {
  et_huff *e = (et_huff *)cinfo->entropy;
  JBLOCK scratch;
  const JOCTET *buf;
  uint64_t bits;
  unsigned n;
  size_t pos;
  int b;
  if (cinfo->restart_interval) {
    if (e->restarts_to_go == 0 && !process_restart(cinfo, e)) return FALSE;
    e->restarts_to_go--;
  }
  if (e->pub.insufficient_data) return TRUE; /* blocks stay zero, as in jdhuff.c */
  buf = e->buf;
  bits = e->bits;
  n = e->n;
  pos = e->pos;
  for (b = 0; b < cinfo->blocks_in_MCU; b++) {
    JCOEF *blk = MCU_data ? MCU_data[b][0] : scratch;
    const et_htab *t = e->dct[b];
    const uint64_t *fast;
    uint64_t x;
    int diff, ci = cinfo->MCU_membership[b];
    unsigned k = 1;
    REFILL();
    x = t->fast.dc[bits >> (64 - LOOK)];
    if (x) {
      unsigned l = (unsigned)(x & 0xFF);
      bits <<= l;
      n -= l;
      diff = (int16_t)(uint16_t)(x >> 16);
    } else {
      int ls = slow_symbol(cinfo, t, bits), s = ls & 15;
      bits <<= ls >> 8;
      n -= (unsigned)(ls >> 8);
      diff = s ? extend((int)(bits >> (64 - s)), s) : 0;
      bits <<= s;
      n -= s;
    }
    /* Unsigned: corrupt data may overflow, which must wrap, not be undefined. */
    e->last_dc[ci] = (int)((unsigned)e->last_dc[ci] + (unsigned)diff);
    blk[0] = (JCOEF)e->last_dc[ci];
    t = e->act[b];
    fast = t->fast.ac;
    for (;;) {
      int step;
      /* 56 bits: four lookups of at most LOOK bits each without refilling. */
      REFILL();
      for (step = 0; step < 4; step++) {
        unsigned lt, k1;
        x = fast[bits >> (64 - LOOK)];
        lt = (unsigned)(x & 0xFF);
        if (!lt) break;
        k1 = k + (unsigned)((x >> 16) & 0xFF);
        if (k1 >= 64) { /* end of block, or its last coefficient: the first symbol only */
          unsigned l1 = (unsigned)((x >> 8) & 0xFF);
          bits <<= l1;
          n -= l1;
          /* The last coefficient; or the end-of-block's 0 where nothing was written yet;
           * or, past it in corrupt data, where libjpeg writes too. */
          blk[63] = (JCOEF)(int16_t)(uint16_t)(x >> 32);
          goto block_done;
        }
        bits <<= lt;
        n -= lt;
        blk[natural[k1]] = (JCOEF)(int16_t)(uint16_t)(x >> 32);
        k = k1 + (unsigned)((x >> 24) & 0xFF);
        blk[natural[k]] = (JCOEF)(int16_t)(uint16_t)(x >> 48);
        if (k >= 64) goto block_done;
      }
      if (step < 4) { /* a code or value the table does not hold */
        int ls, r, sz;
        REFILL();
        ls = slow_symbol(cinfo, t, bits);
        r = (ls >> 4) & 15;
        sz = ls & 15;
        bits <<= ls >> 8;
        n -= (unsigned)(ls >> 8);
        if (sz) {
          k += (unsigned)r + 1;
          blk[natural[k]] = (JCOEF)extend((int)(bits >> (64 - sz)), sz);
          bits <<= sz;
          n -= (unsigned)sz;
        } else if (r == 15) {
          k += 16;
        } else {
          goto block_done;
        }
        if (k >= 64) goto block_done;
      }
    }
  block_done:;
  }
  /* Consumed past the segment: the data ended (or hit a marker) too early. */
  if ((pos << 3) - n > (e->len << 3)) {
    WARNMS(cinfo, JWRN_HIT_MARKER);
    e->pub.insufficient_data = TRUE;
  }
  e->bits = bits;
  e->n = n;
  e->pos = pos;
  return TRUE;
}

static boolean decode_mcu(j_decompress_ptr cinfo, JBLOCKROW *MCU_data) {
  return decode_mcu_body(cinfo, MCU_data);
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("bmi2"))) static boolean decode_mcu_bmi2(j_decompress_ptr cinfo,
                                                               JBLOCKROW *MCU_data) {
  return decode_mcu_body(cinfo, MCU_data);
}
#endif

/* Replaces libjpeg's entropy decoder by this one after jpeg_start_decompress, where it
 * applies: one baseline (or extended sequential) Huffman scan of 8-bit samples holding
 * every component, read from memory. Returns 1 when installed. */
int et_huff_install(j_decompress_ptr cinfo) {
  et_huff *e;
  if (cinfo->progressive_mode || cinfo->arith_code || cinfo->data_precision != 8 ||
      cinfo->comps_in_scan != cinfo->num_components || cinfo->blocks_in_MCU > D_MAX_BLOCKS_IN_MCU ||
      cinfo->output_scanline != 0 || !cinfo->src)
    return 0;
  e = (et_huff *)(*cinfo->mem->alloc_small)((j_common_ptr)cinfo, JPOOL_IMAGE, sizeof(et_huff));
  memset(e, 0, sizeof(*e));
  e->buf = (JOCTET *)(*cinfo->mem->alloc_large)((j_common_ptr)cinfo, JPOOL_IMAGE, cinfo->src->bytes_in_buffer + PAD);
  e->pub.start_pass = start_pass;
  e->pub.decode_mcu = decode_mcu;
#if defined(__x86_64__) && defined(__GNUC__)
  if (__builtin_cpu_supports("bmi2")) e->pub.decode_mcu = decode_mcu_bmi2;
#endif
  cinfo->entropy = &e->pub;
  start_pass(cinfo);
  return 1;
}
