/* A minimal bridge to the system libjpeg(-turbo): the same decoder Pillow uses, with its
 * scaled (reduced DCT size) decode. libjpeg reports fatal errors by calling error_exit,
 * which must not return: it longjmps back into whichever bridge function called into
 * the library, so every entry point below sets the jump target first. Warnings (corrupt
 * but decodable data) are counted, not printed, because Pillow also decodes through them;
 * truncation is rejected on the Rust side before decoding. */
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jpeglib.h>

#define ET_ROWS 16

int et_huff_install(j_decompress_ptr cinfo); /* ethuff.c */

typedef struct {
  struct jpeg_error_mgr pub;
  jmp_buf jump;
  char msg[JMSG_LENGTH_MAX];
} et_err;

typedef struct {
  struct jpeg_decompress_struct cinfo;
  et_err err;
  int started;
  JDIMENSION xoff; /* first decoded column after jpeg_crop_scanline */
} et_jpeg;

static void et_error_exit(j_common_ptr cinfo) {
  et_err *e = (et_err *)cinfo->err;
  (*cinfo->err->format_message)(cinfo, e->msg);
  longjmp(e->jump, 1);
}

static void et_output_message(j_common_ptr cinfo) { (void)cinfo; }

static void copy_msg(et_jpeg *h, char *err, size_t errlen) {
  if (err && errlen) {
    strncpy(err, h->err.msg, errlen - 1);
    err[errlen - 1] = 0;
  }
}

/* Reads the header. Returns 0 and the image size and colour model (1: grey, 3: YCbCr or
 * RGB, 4: CMYK / YCCK, which the caller converts itself), or -1 with a message. */
int et_jpeg_open(const unsigned char *buf, unsigned long len, et_jpeg **out, unsigned *w,
                 unsigned *h, int *model, char *err, size_t errlen) {
  et_jpeg *j = (et_jpeg *)calloc(1, sizeof(et_jpeg));
  *out = NULL;
  if (!j) {
    strncpy(err, "out of memory", errlen);
    return -1;
  }
  j->cinfo.err = jpeg_std_error(&j->err.pub);
  j->err.pub.error_exit = et_error_exit;
  j->err.pub.output_message = et_output_message;
  if (setjmp(j->err.jump)) {
    copy_msg(j, err, errlen);
    jpeg_destroy_decompress(&j->cinfo);
    free(j);
    return -1;
  }
  jpeg_create_decompress(&j->cinfo);
  jpeg_mem_src(&j->cinfo, buf, len);
  jpeg_read_header(&j->cinfo, TRUE);
  *w = j->cinfo.image_width;
  *h = j->cinfo.image_height;
  switch (j->cinfo.jpeg_color_space) {
  case JCS_GRAYSCALE: *model = 1; break;
  case JCS_YCbCr: case JCS_RGB: *model = 3; break;
  default: *model = 4; break;
  }
  *out = j;
  return 0;
}

/* Starts decoding at 1/denom scale (denom in 1, 2, 4, 8) to RGB and returns the output
 * size, which libjpeg rounds up: ceil(w / denom). With fast_entropy, baseline scans are
 * entropy-decoded by ethuff.c instead of libjpeg's jdhuff.c (the same coefficients). */
int et_jpeg_start(et_jpeg *j, unsigned denom, int fast_entropy, int *fast_used, unsigned *ow,
                  unsigned *oh, char *err, size_t errlen) {
  if (setjmp(j->err.jump)) {
    copy_msg(j, err, errlen);
    return -1;
  }
  j->cinfo.scale_num = 1;
  j->cinfo.scale_denom = denom;
  /* CMYK and YCCK files come out as CMYK (libjpeg converts YCCK), 4 bytes a pixel: the
   * caller converts to RGB as PIL does. */
  int cmyk = j->cinfo.jpeg_color_space == JCS_CMYK || j->cinfo.jpeg_color_space == JCS_YCCK;
  j->cinfo.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
  jpeg_start_decompress(&j->cinfo);
  *fast_used = fast_entropy && !cmyk ? et_huff_install(&j->cinfo) : 0;
  j->started = 1;
  *ow = j->cinfo.output_width;
  *oh = j->cinfo.output_height;
  return 0;
}

/* Limits decoding to the columns around x0..x1 of the output: columns outside skip IDCT,
 * upsampling and colour conversion. The decoded span keeps one iMCU of margin on each
 * side: at the edge of a cropped span the fancy upsampler replicates edge samples instead
 * of reading the neighbours, so only pixels at least that far inside equal those of a
 * full decode. Returns the span's width and the column of x0 inside it. */
int et_jpeg_crop(et_jpeg *j, unsigned x0, unsigned x1, unsigned *span_w, unsigned *x_in_span,
                 char *err, size_t errlen) {
  if (setjmp(j->err.jump)) {
    copy_msg(j, err, errlen);
    return -1;
  }
  if (j->cinfo.output_scanline == 0 && (x0 > 0 || x1 < j->cinfo.output_width)) {
    unsigned margin = (unsigned)(j->cinfo.max_h_samp_factor * j->cinfo.min_DCT_scaled_size);
    JDIMENSION xoff = x0 > margin ? x0 - margin : 0;
    JDIMENSION end = x1 + margin < j->cinfo.output_width ? x1 + margin : j->cinfo.output_width;
    JDIMENSION span = end - xoff;
    if (xoff > 0 || span < j->cinfo.output_width) {
      jpeg_crop_scanline(&j->cinfo, &xoff, &span); /* xoff moves left to an iMCU boundary */
      j->xoff = xoff;
    }
  }
  *span_w = j->cinfo.output_width; /* the span's width once cropped */
  *x_in_span = x0 - j->xoff;
  return 0;
}

/* Decodes output rows y0..y1 straight into dst, row r at dst + r * stride (each row the
 * span's width of RGB). Rows above y0 are entropy-decoded only (no IDCT, upsampling or
 * colour conversion); libjpeg-turbo decodes the context rows the upsampler needs, so the
 * rows after them equal a full decode (et-bench decode-check compares). Rows after y1 are
 * never decoded, which is where a crop saves entropy decoding. */
int et_jpeg_read_into(et_jpeg *j, unsigned y0, unsigned y1, unsigned char *dst, size_t stride,
                      char *err, size_t errlen) {
  JSAMPROW rows[ET_ROWS];
  if (setjmp(j->err.jump)) {
    copy_msg(j, err, errlen);
    return -1;
  }
  if (j->cinfo.output_scanline < y0)
    jpeg_skip_scanlines(&j->cinfo, y0 - j->cinfo.output_scanline);
  if (j->cinfo.output_scanline != y0) {
    strncpy(err, "decoder could not skip to the window", errlen);
    return -1;
  }
  /* Several rows per call: with one, libjpeg's 2x2 upsampler decodes into a spare row and
   * copies it. */
  while (j->cinfo.output_scanline < y1) {
    unsigned y = j->cinfo.output_scanline, want = y1 - y, r;
    if (want > ET_ROWS) want = ET_ROWS;
    for (r = 0; r < want; r++) rows[r] = dst + (size_t)(y - y0 + r) * stride;
    if (jpeg_read_scanlines(&j->cinfo, rows, want) == 0) {
      strncpy(err, "decoder returned no rows", errlen);
      return -1;
    }
  }
  return 0;
}

int et_jpeg_warnings(et_jpeg *j) { return (int)j->err.pub.num_warnings; }

void et_jpeg_close(et_jpeg *j) {
  if (!j) return;
  /* Aborting (not finishing) is what lets a crop stop before the last row. */
  jpeg_destroy_decompress(&j->cinfo);
  free(j);
}

/* Encodes w x h samples (ncomp 1: grey, 3: RGB) with libjpeg, for tests of the decoders:
 * the luma sampling factors (chroma stays 1x1), restart interval (in MCUs), optimised or
 * standard Huffman tables and progressive mode are the caller's. *out is malloc'd. */
int et_jpeg_encode(const unsigned char *px, unsigned w, unsigned h, int ncomp, int quality,
                   int h_samp, int v_samp, unsigned restart, int optimize, int progressive,
                   unsigned char **out, unsigned long *outlen, char *err, size_t errlen) {
  struct jpeg_compress_struct c;
  et_err e;
  unsigned y;
  *out = NULL;
  *outlen = 0;
  c.err = jpeg_std_error(&e.pub);
  e.pub.error_exit = et_error_exit;
  e.pub.output_message = et_output_message;
  if (setjmp(e.jump)) {
    if (err && errlen) {
      strncpy(err, e.msg, errlen - 1);
      err[errlen - 1] = 0;
    }
    jpeg_destroy_compress(&c);
    free(*out);
    *out = NULL;
    return -1;
  }
  jpeg_create_compress(&c);
  jpeg_mem_dest(&c, out, outlen);
  c.image_width = w;
  c.image_height = h;
  c.input_components = ncomp;
  c.in_color_space = ncomp == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(&c);
  jpeg_set_quality(&c, quality, TRUE);
  c.comp_info[0].h_samp_factor = h_samp;
  c.comp_info[0].v_samp_factor = v_samp;
  c.restart_interval = restart;
  c.optimize_coding = optimize ? TRUE : FALSE;
  if (progressive) jpeg_simple_progression(&c);
  jpeg_start_compress(&c, TRUE);
  for (y = 0; y < h; y++) {
    JSAMPROW row = (JSAMPROW)(px + (size_t)y * w * (unsigned)ncomp);
    jpeg_write_scanlines(&c, &row, 1);
  }
  jpeg_finish_compress(&c);
  jpeg_destroy_compress(&c);
  return 0;
}

void et_jpeg_free(unsigned char *p) { free(p); }
