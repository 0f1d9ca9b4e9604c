// cpng: a small C layer over libpng's full API for module IO (Sources/IO/PNG.swift).
//
// libpng reports errors by longjmp, which must never cross Swift frames, so every setjmp lives in cpng.c and
// errors come back as an HG_PNG_* code plus a message copied into a caller-provided buffer.
//
// Decoding matches what Pillow hands diffusers' VaeImageProcessor after `Image.open(p).convert(mode)`:
// palette -> RGB, tRNS -> alpha, gray < 8 bits -> 8 bits by bit replication, 16 bits -> 8 bits by taking the
// high byte (Pillow's "RGB;16B"/"RGBA;16B"/"LA;16B" unpackers; for 16-bit gray Pillow opens "I;16" and then
// saturates on convert, which we do not copy), Adam7 de-interlaced, gAMA/iCCP ignored.
// Channel conversions are Pillow's Convert.c (rgb2l, la2rgb, rgba2rgb, ...), including its L24 luma rounding.
#ifndef HGDPO_CPNG_H
#define HGDPO_CPNG_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    HG_PNG_OK = 0,
    HG_PNG_ERR_OPEN = 1,      // the file cannot be opened/created (message: strerror text, with context)
    HG_PNG_ERR_NOT_PNG = 2,   // wrong signature or empty file
    HG_PNG_ERR_CORRUPT = 3,   // libpng error while decoding: truncation, bad CRC, bad zlib data, bad header
    HG_PNG_ERR_TOO_LARGE = 4, // decoding would need more than HG_PNG_MAX_BYTES (checked before any allocation)
    HG_PNG_ERR_NOMEM = 5,     // malloc failed
    HG_PNG_ERR_WRITE = 6,     // I/O error while writing, flushing, syncing or renaming
    HG_PNG_ERR_INVALID = 7,   // bad argument: channel count, compression level, text keyword
};

// Largest decoded (or converted) 8-bit pixel buffer accepted, in bytes: 2^31.
#define HG_PNG_MAX_BYTES ((uint64_t)1 << 31)
// Suggested size of the caller's message buffer; longer messages are truncated, always NUL-terminated.
#define HG_PNG_MESSAGE_CAPACITY 512

typedef struct {
    char *key;   // UTF-8, NUL-terminated (PNG keywords are Latin-1; converted)
    char *value; // UTF-8, NUL-terminated (tEXt/zTXt Latin-1 converted; iTXt kept as stored)
} hg_png_text;

typedef struct {
    uint8_t *pixels;      // (H, W, C) interleaved, 8-bit, malloc'ed by cpng; free with hg_png_image_free
    uint32_t width;
    uint32_t height;
    int channels;         // channels of `pixels`: the requested count, or the decoded one when 0 was requested
    int file_channels;    // decoded channels before conversion: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA (tRNS -> alpha)
    int bit_depth;        // bit depth stored in the file (1, 2, 4, 8 or 16)
    int color_type;       // PNG colour type stored in the file (0, 2, 3, 4, 6)
    int interlaced;       // 1 if the file is Adam7-interlaced
    hg_png_text *texts;   // tEXt/zTXt/iTXt chunks in file order (before and after IDAT)
    int text_count;
} hg_png_image;

typedef struct {
    const char *key;   // Latin-1 bytes, 1...79 printable characters, NUL-terminated
    const char *value; // Latin-1 bytes for tEXt, UTF-8 for iTXt; NUL-terminated
    int is_utf8;       // 1: write an iTXt chunk (value not representable in Latin-1), 0: tEXt
} hg_png_text_in;

/// Reads the PNG at `path` into `out` (zeroed first). `want_channels` is 0 (keep the decoded channels) or 1...4
/// (1 L, 2 LA, 3 RGB, 4 RGBA, converted as Pillow's `convert`). Returns HG_PNG_OK or an error code with a
/// message in `message`. On error `out` holds nothing that needs freeing.
int hg_png_read(const char *path, int want_channels, hg_png_image *out, char *message, size_t message_capacity);

/// Frees what hg_png_read allocated and zeroes `image`. Safe on a zeroed or already freed image.
void hg_png_image_free(hg_png_image *image);

/// Writes 8-bit interleaved (H, W, C) `pixels` with 1...4 channels to `path` atomically: a temporary file in the
/// same directory is written, fsync'ed and renamed over `path`; on failure it is removed and `path` is untouched.
/// `compression_level` is zlib's 0...9 (Pillow's default is 6). Text chunks are written before IDAT.
int hg_png_write(const char *path, const uint8_t *pixels, uint32_t width, uint32_t height, int channels,
                 const hg_png_text_in *texts, int text_count, int compression_level,
                 char *message, size_t message_capacity);

// MARK: - Test helpers (used by Tests/IOTests/PNGTests.swift only)

/// Writes a PNG of any colour type / bit depth straight from packed PNG rows: `rows` holds `height` rows of
/// ceil(width * samples * bit_depth / 8) bytes each, 16-bit samples big-endian, as stored in the file. Optional
/// palette (`palette_rgb`: `palette_count` RGB triples), palette tRNS (`trns_alpha`: `trns_alpha_count` alphas),
/// gray/RGB tRNS (`trns_color`: 1 gray or 3 RGB samples in the file's bit depth, NULL for none) and Adam7
/// interlacing. Not atomic; for tests of the reader only.
int hg_png_test_write_raw(const char *path, const uint8_t *rows, uint32_t width, uint32_t height,
                          int bit_depth, int color_type, int interlaced,
                          const uint8_t *palette_rgb, int palette_count,
                          const uint8_t *trns_alpha, int trns_alpha_count, const uint16_t *trns_color,
                          char *message, size_t message_capacity);

#ifdef __cplusplus
}
#endif

#endif
