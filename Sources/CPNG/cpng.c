// cpng.c: PNG read/write over libpng's full API, with every setjmp kept on the C side.
// Ref: Pillow src/libImaging/Convert.c (rgb2l's L24 luma, la2rgb, rgba2rgb, l2rgb) for channel conversions;
//      Pillow PngImagePlugin (16-bit RGB/RGBA/LA read as the high byte, text chunks before and after IDAT).
//
// Error handling: libpng calls hg_png_error, which copies the message into the caller's buffer and longjmps back
// to the setjmp in hg_read_decode / hg_write_encode. Those functions keep every resource in an hg_png_session
// owned by their caller, so nothing is lost when the jump lands, and no Swift frame is ever between the two.
#include "cpng.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <png.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

// MARK: - Messages and libpng callbacks

static void hg_message(char *buffer, size_t capacity, const char *format, ...) {
    if (buffer == NULL || capacity == 0) return;
    va_list args;
    va_start(args, format);
    vsnprintf(buffer, capacity, format, args);
    va_end(args);
}

// Everything a read or a write holds, owned by the function that calls the setjmp'ing one.
typedef struct {
    png_structp png;
    png_infop info;
    FILE *file;
    char *message;
    size_t capacity;
    int code;  // returned when libpng longjmps
    char scratch[HG_PNG_MESSAGE_CAPACITY];
} hg_png_session;

static void hg_png_error(png_structp png, png_const_charp text) {
    hg_png_session *session = (hg_png_session *)png_get_error_ptr(png);
    hg_message(session->message, session->capacity, "%s", text != NULL ? text : "unknown libpng error");
    png_longjmp(png, 1);
}

// Warnings (an sRGB profile libpng dislikes, a benign extra byte) are not worth failing or printing for: Pillow
// ignores them too.
static void hg_png_warning(png_structp png, png_const_charp text) {
    (void)png;
    (void)text;
}

static void hg_png_read_data(png_structp png, png_bytep data, size_t length) {
    hg_png_session *session = (hg_png_session *)png_get_io_ptr(png);
    if (fread(data, 1, length, session->file) == length) return;
    if (ferror(session->file)) {
        snprintf(session->scratch, sizeof session->scratch, "read error: %s", strerror(errno));
        png_error(png, session->scratch);
    }
    png_error(png, "unexpected end of file");
}

static void hg_png_write_data(png_structp png, png_bytep data, size_t length) {
    hg_png_session *session = (hg_png_session *)png_get_io_ptr(png);
    if (fwrite(data, 1, length, session->file) == length) return;
    snprintf(session->scratch, sizeof session->scratch, "write error: %s", strerror(errno));
    png_error(png, session->scratch);
}

static void hg_png_flush_data(png_structp png) {
    hg_png_session *session = (hg_png_session *)png_get_io_ptr(png);
    fflush(session->file);  // errors surface at the final fflush/fsync/fclose
}

// MARK: - Channel conversions (Pillow Convert.c)

// ITU-R 601-2 luma in Pillow's 16.16 fixed point: L24(rgb) >> 16, i.e. round(R*0.299 + G*0.587 + B*0.114).
static inline uint8_t hg_luma(const uint8_t *rgb) {
    uint32_t l24 = (uint32_t)rgb[0] * 19595u + (uint32_t)rgb[1] * 38470u + (uint32_t)rgb[2] * 7471u + 0x8000u;
    return (uint8_t)(l24 >> 16);
}

// (N, from) -> (N, to) interleaved, from != to, both in 1...4 (L, LA, RGB, RGBA).
static void hg_convert(const uint8_t *in, int from, uint8_t *out, int to, size_t count) {
    for (size_t i = 0; i < count; i++, in += from, out += to) {
        uint8_t gray = from <= 2 ? in[0] : hg_luma(in);               // rgb2l ignores alpha
        uint8_t alpha = from == 2 ? in[1] : from == 4 ? in[3] : 255;  // l2rgb/rgb2rgba set 255
        switch (to) {
        case 1: out[0] = gray; break;                                 // la2l, rgb2l, rgba -> rgb2l
        case 2: out[0] = gray; out[1] = alpha; break;                 // l2la, rgb2la, rgba2la
        case 3:
        case 4:
            if (from <= 2) {
                out[0] = out[1] = out[2] = in[0];                     // l2rgb, la2rgb
            } else {
                out[0] = in[0]; out[1] = in[1]; out[2] = in[2];       // rgba2rgb drops alpha
            }
            if (to == 4) out[3] = alpha;
            break;
        }
    }
}

static char *hg_latin1_to_utf8(const char *text) {
    if (text == NULL) text = "";
    size_t length = 0;
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) length += *p < 0x80 ? 1 : 2;
    char *result = malloc(length + 1);
    if (result == NULL) return NULL;
    char *o = result;
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        if (*p < 0x80) {
            *o++ = (char)*p;
        } else {
            *o++ = (char)(0xC0 | (*p >> 6));
            *o++ = (char)(0x80 | (*p & 0x3F));
        }
    }
    *o = 0;
    return result;
}

// MARK: - Read

typedef struct {
    uint8_t *pixels;  // (H, W, file_channels)
    hg_png_text *texts;
    int text_count;
    uint32_t width, height;
    int channels, bit_depth, color_type, interlaced;
} hg_read_result;

static void hg_free_texts(hg_png_text *texts, int count) {
    if (texts == NULL) return;
    for (int i = 0; i < count; i++) {
        free(texts[i].key);
        free(texts[i].value);
    }
    free(texts);
}

// The only function of the read path that calls setjmp; all state lives in *session and *result.
static int hg_read_decode(hg_png_session *session, hg_read_result *result, int want_channels) {
    session->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, session, hg_png_error, hg_png_warning);
    if (session->png == NULL) {
        hg_message(session->message, session->capacity, "cannot create libpng read struct");
        return HG_PNG_ERR_NOMEM;
    }
    session->info = png_create_info_struct(session->png);
    if (session->info == NULL) {
        hg_message(session->message, session->capacity, "cannot create libpng info struct");
        return HG_PNG_ERR_NOMEM;
    }
    if (setjmp(png_jmpbuf(session->png))) return session->code;

    png_structp png = session->png;
    png_infop info = session->info;
    png_set_read_fn(png, session, hg_png_read_data);
    png_set_sig_bytes(png, 8);
    // Our own size check below reports absurd dimensions; libpng's default 10^6 limit would call them corrupt.
    png_set_user_limits(png, PNG_UINT_31_MAX, PNG_UINT_31_MAX);
    // Bad CRCs are errors in every chunk, as in Pillow (libpng would only warn for ancillary ones).
    png_set_crc_action(png, PNG_CRC_DEFAULT, PNG_CRC_ERROR_QUIT);
    png_read_info(png, info);

    png_uint_32 width = 0, height = 0;
    int bit_depth = 0, color_type = 0, interlace = 0;
    png_get_IHDR(png, info, &width, &height, &bit_depth, &color_type, &interlace, NULL, NULL);
    result->width = width;
    result->height = height;
    result->bit_depth = bit_depth;
    result->color_type = color_type;
    result->interlaced = interlace != PNG_INTERLACE_NONE;

    // Refuse absurd sizes before png_read_update_info: it allocates and clears libpng's own row buffers (one
    // row at the file's bit depth, twice), and a 50-byte file can declare 2^31 x 2^31 pixels.
    int has_trns = png_get_valid(png, info, PNG_INFO_tRNS) != 0;
    int channels = color_type == PNG_COLOR_TYPE_GRAY ? 1 + has_trns
                 : color_type == PNG_COLOR_TYPE_GRAY_ALPHA ? 2
                 : color_type == PNG_COLOR_TYPE_RGB_ALPHA ? 4
                 : 3 + has_trns;  // RGB, palette
    int out_channels = want_channels ? want_channels : channels;
    // width, height < 2^31 and channels <= 4, so each product fits in 64 bits (4 (2^31 - 1)^2 < 2^64) but their
    // sum may not: each term is bounded first.
    uint64_t decoded_bytes = (uint64_t)width * height * (uint64_t)channels;
    uint64_t converted_bytes = want_channels ? (uint64_t)width * height * (uint64_t)want_channels : 0;
    uint64_t libpng_row_bytes = (uint64_t)width * (uint64_t)channels * (bit_depth == 16 ? 2u : 1u) + 64u;
    uint64_t needed_bytes = decoded_bytes > HG_PNG_MAX_BYTES || converted_bytes > HG_PNG_MAX_BYTES ||
                                    libpng_row_bytes > HG_PNG_MAX_BYTES
                                ? UINT64_MAX
                                : decoded_bytes + converted_bytes + 2u * libpng_row_bytes;
    if (needed_bytes > HG_PNG_MAX_BYTES) {
        hg_message(session->message, session->capacity,
                   "%u x %u pixels with %d channels needs more than the 2^31 bytes allowed to decode",
                   (unsigned)width, (unsigned)height, out_channels);
        return HG_PNG_ERR_TOO_LARGE;
    }

    if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (color_type == PNG_COLOR_TYPE_GRAY && bit_depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (has_trns) png_set_tRNS_to_alpha(png);
    if (bit_depth == 16) png_set_strip_16(png);  // high byte, as Pillow's "RGB;16B" unpacker
    int passes = png_set_interlace_handling(png);
    png_read_update_info(png, info);

    size_t rowbytes = png_get_rowbytes(png, info);
    if (png_get_channels(png, info) != channels || png_get_bit_depth(png, info) != 8 ||
        rowbytes != (size_t)width * (size_t)channels) {
        hg_message(session->message, session->capacity, "unexpected decoded layout (%d channels, %d bits)",
                   png_get_channels(png, info), png_get_bit_depth(png, info));
        return HG_PNG_ERR_CORRUPT;
    }
    result->channels = channels;
    result->pixels = malloc(decoded_bytes ? (size_t)decoded_bytes : 1);
    if (result->pixels == NULL) {
        hg_message(session->message, session->capacity, "cannot allocate %llu bytes for pixels",
                   (unsigned long long)decoded_bytes);
        return HG_PNG_ERR_NOMEM;
    }
    // Row by row, each Adam7 pass filling in its pixels of the same rows: no row-pointer array.
    for (int pass = 0; pass < passes; pass++) {
        for (png_uint_32 y = 0; y < height; y++) png_read_row(png, result->pixels + (size_t)y * rowbytes, NULL);
    }
    png_read_end(png, info);  // checks the trailing chunks' CRCs and collects text after IDAT

    png_textp text = NULL;
    int text_count = png_get_text(png, info, &text, NULL);
    if (text_count > 0 && text != NULL) {
        result->texts = calloc((size_t)text_count, sizeof(hg_png_text));
        if (result->texts == NULL) {
            hg_message(session->message, session->capacity, "cannot allocate text chunks");
            return HG_PNG_ERR_NOMEM;
        }
        for (int i = 0; i < text_count; i++) {
            // tEXt/zTXt hold Latin-1; iTXt holds UTF-8 (keywords are Latin-1 in all three).
            int is_utf8 = text[i].compression >= PNG_ITXT_COMPRESSION_NONE;
            const char *value = text[i].text != NULL ? text[i].text : "";
            hg_png_text *entry = &result->texts[result->text_count++];
            entry->key = hg_latin1_to_utf8(text[i].key);
            entry->value = is_utf8 ? strdup(value) : hg_latin1_to_utf8(value);
            if (entry->key == NULL || entry->value == NULL) {
                hg_message(session->message, session->capacity, "cannot allocate text chunks");
                return HG_PNG_ERR_NOMEM;
            }
        }
    }
    return HG_PNG_OK;
}

int hg_png_read(const char *path, int want_channels, hg_png_image *out, char *message, size_t message_capacity) {
    hg_message(message, message_capacity, "%s", "");
    if (out == NULL || path == NULL) {
        hg_message(message, message_capacity, "no path or no output given");
        return HG_PNG_ERR_INVALID;
    }
    memset(out, 0, sizeof *out);
    if (want_channels < 0 || want_channels > 4) {
        hg_message(message, message_capacity,
                   "cannot convert to %d channels (0 as stored, 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA)", want_channels);
        return HG_PNG_ERR_INVALID;
    }

    FILE *file = fopen(path, "rb");
    if (file == NULL) {
        hg_message(message, message_capacity, "%s", strerror(errno));
        return HG_PNG_ERR_OPEN;
    }
    struct stat status;
    if (fstat(fileno(file), &status) == 0 && S_ISDIR(status.st_mode)) {
        fclose(file);
        hg_message(message, message_capacity, "%s", strerror(EISDIR));
        return HG_PNG_ERR_OPEN;
    }
    uint8_t signature[8];
    size_t signature_bytes = fread(signature, 1, sizeof signature, file);
    if (signature_bytes == 0) {
        int failed = ferror(file);
        int error = errno;
        fclose(file);
        if (failed) {
            hg_message(message, message_capacity, "%s", strerror(error));
            return HG_PNG_ERR_OPEN;
        }
        hg_message(message, message_capacity, "empty file");
        return HG_PNG_ERR_NOT_PNG;
    }
    if (png_sig_cmp(signature, 0, signature_bytes) != 0) {
        fclose(file);
        hg_message(message, message_capacity, "signature mismatch");
        return HG_PNG_ERR_NOT_PNG;
    }
    if (signature_bytes < sizeof signature) {
        fclose(file);
        hg_message(message, message_capacity, "unexpected end of file in the signature");
        return HG_PNG_ERR_CORRUPT;
    }

    hg_png_session session;
    memset(&session, 0, sizeof session);
    session.file = file;
    session.message = message;
    session.capacity = message_capacity;
    session.code = HG_PNG_ERR_CORRUPT;
    hg_read_result result;
    memset(&result, 0, sizeof result);

    int code = hg_read_decode(&session, &result, want_channels);
    if (session.png != NULL) png_destroy_read_struct(&session.png, session.info ? &session.info : NULL, NULL);
    fclose(file);

    if (code == HG_PNG_OK && want_channels != 0 && want_channels != result.channels) {
        size_t count = (size_t)result.width * result.height;
        uint8_t *converted = malloc(count * (size_t)want_channels + 1);
        if (converted == NULL) {
            hg_message(message, message_capacity, "cannot allocate %zu bytes for converted pixels",
                       count * (size_t)want_channels);
            code = HG_PNG_ERR_NOMEM;
        } else {
            hg_convert(result.pixels, result.channels, converted, want_channels, count);
            free(result.pixels);
            result.pixels = converted;
        }
    }
    if (code != HG_PNG_OK) {
        free(result.pixels);
        hg_free_texts(result.texts, result.text_count);
        return code;
    }
    out->pixels = result.pixels;
    out->width = result.width;
    out->height = result.height;
    out->channels = want_channels ? want_channels : result.channels;
    out->file_channels = result.channels;
    out->bit_depth = result.bit_depth;
    out->color_type = result.color_type;
    out->interlaced = result.interlaced;
    out->texts = result.texts;
    out->text_count = result.text_count;
    return HG_PNG_OK;
}

void hg_png_image_free(hg_png_image *image) {
    if (image == NULL) return;
    free(image->pixels);
    hg_free_texts(image->texts, image->text_count);
    memset(image, 0, sizeof *image);
}

// MARK: - Write

typedef struct {
    const uint8_t *pixels;  // packed PNG rows
    size_t rowbytes;
    uint32_t width, height;
    int bit_depth, color_type, interlaced, compression_level;
    const png_color *palette;
    int palette_count;
    const uint8_t *trns_alpha;
    int trns_alpha_count;
    const png_color_16 *trns_color;
    const png_text *texts;
    int text_count;
} hg_write_request;

// The only function of the write path that calls setjmp; all state lives in *session.
static int hg_write_encode(hg_png_session *session, const hg_write_request *request) {
    session->png = png_create_write_struct(PNG_LIBPNG_VER_STRING, session, hg_png_error, hg_png_warning);
    if (session->png == NULL) {
        hg_message(session->message, session->capacity, "cannot create libpng write struct");
        return HG_PNG_ERR_NOMEM;
    }
    session->info = png_create_info_struct(session->png);
    if (session->info == NULL) {
        hg_message(session->message, session->capacity, "cannot create libpng info struct");
        return HG_PNG_ERR_NOMEM;
    }
    if (setjmp(png_jmpbuf(session->png))) return session->code;

    png_structp png = session->png;
    png_infop info = session->info;
    png_set_write_fn(png, session, hg_png_write_data, hg_png_flush_data);
    png_set_compression_level(png, request->compression_level);
    png_set_IHDR(png, info, request->width, request->height, request->bit_depth, request->color_type,
                 request->interlaced ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (request->palette != NULL) png_set_PLTE(png, info, request->palette, request->palette_count);
    if (request->trns_alpha != NULL || request->trns_color != NULL) {
        png_set_tRNS(png, info, request->trns_alpha, request->trns_alpha_count, request->trns_color);
    }
    if (request->text_count > 0) png_set_text(png, info, request->texts, request->text_count);
    png_write_info(png, info);
    int passes = png_set_interlace_handling(png);
    for (int pass = 0; pass < passes; pass++) {
        for (uint32_t y = 0; y < request->height; y++) {
            png_write_row(png, request->pixels + (size_t)y * request->rowbytes);
        }
    }
    png_write_end(png, NULL);
    return HG_PNG_OK;
}

static int hg_encode_to_file(FILE *file, const hg_write_request *request, char *message, size_t capacity) {
    hg_png_session session;
    memset(&session, 0, sizeof session);
    session.file = file;
    session.message = message;
    session.capacity = capacity;
    session.code = HG_PNG_ERR_WRITE;
    int code = hg_write_encode(&session, request);
    if (session.png != NULL) png_destroy_write_struct(&session.png, session.info ? &session.info : NULL);
    return code;
}

static int hg_check_dimensions(uint32_t width, uint32_t height, int channels, char *message, size_t capacity) {
    if (width == 0 || height == 0 || width > PNG_UINT_31_MAX || height > PNG_UINT_31_MAX) {
        hg_message(message, capacity, "invalid dimensions %u x %u", (unsigned)width, (unsigned)height);
        return HG_PNG_ERR_INVALID;
    }
    if ((uint64_t)width * height * (uint64_t)channels > HG_PNG_MAX_BYTES) {
        hg_message(message, capacity, "%u x %u pixels with %d channels is more than the 2^31 bytes allowed",
                   (unsigned)width, (unsigned)height, channels);
        return HG_PNG_ERR_TOO_LARGE;
    }
    return HG_PNG_OK;
}

// fsync the directory holding `path` so the rename itself is durable; best effort.
static void hg_sync_parent_directory(const char *path) {
    char *copy = strdup(path);
    if (copy == NULL) return;
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
    free(copy);
}

static atomic_uint hg_temporary_counter;

int hg_png_write(const char *path, const uint8_t *pixels, uint32_t width, uint32_t height, int channels,
                 const hg_png_text_in *texts, int text_count, int compression_level,
                 char *message, size_t message_capacity) {
    static const int color_types[5] = {0, PNG_COLOR_TYPE_GRAY, PNG_COLOR_TYPE_GRAY_ALPHA, PNG_COLOR_TYPE_RGB,
                                       PNG_COLOR_TYPE_RGB_ALPHA};
    hg_message(message, message_capacity, "%s", "");
    if (path == NULL || pixels == NULL || (text_count > 0 && texts == NULL) || text_count < 0) {
        hg_message(message, message_capacity, "no path, pixels or texts given");
        return HG_PNG_ERR_INVALID;
    }
    if (channels < 1 || channels > 4) {
        hg_message(message, message_capacity,
                   "cannot write %d channels (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA)", channels);
        return HG_PNG_ERR_INVALID;
    }
    if (compression_level < 0 || compression_level > 9) {
        hg_message(message, message_capacity, "compression level %d is not in 0...9", compression_level);
        return HG_PNG_ERR_INVALID;
    }
    int code = hg_check_dimensions(width, height, channels, message, message_capacity);
    if (code != HG_PNG_OK) return code;

    png_text *png_texts = text_count > 0 ? calloc((size_t)text_count, sizeof(png_text)) : NULL;
    if (text_count > 0 && png_texts == NULL) {
        hg_message(message, message_capacity, "cannot allocate text chunks");
        return HG_PNG_ERR_NOMEM;
    }
    for (int i = 0; i < text_count; i++) {
        size_t key_length = texts[i].key != NULL ? strlen(texts[i].key) : 0;
        if (key_length < 1 || key_length > 79 || texts[i].value == NULL) {
            free(png_texts);
            hg_message(message, message_capacity, "text keyword %d must be 1 to 79 bytes, with a value", i);
            return HG_PNG_ERR_INVALID;
        }
        png_texts[i].compression = texts[i].is_utf8 ? PNG_ITXT_COMPRESSION_NONE : PNG_TEXT_COMPRESSION_NONE;
        png_texts[i].key = (png_charp)texts[i].key;
        png_texts[i].text = (png_charp)texts[i].value;
        png_texts[i].text_length = strlen(texts[i].value);
    }

    size_t path_length = strlen(path);
    char *temporary = malloc(path_length + 64);
    if (temporary == NULL) {
        free(png_texts);
        hg_message(message, message_capacity, "cannot allocate a path");
        return HG_PNG_ERR_NOMEM;
    }
    int fd = -1;
    for (int attempt = 0; attempt < 100 && fd < 0; attempt++) {
        unsigned serial = atomic_fetch_add(&hg_temporary_counter, 1u);
        snprintf(temporary, path_length + 64, "%s.tmp.%ld.%u", path, (long)getpid(), serial);
        fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd < 0 && errno != EEXIST) break;
    }
    if (fd < 0) {
        hg_message(message, message_capacity, "creating %s: %s", temporary, strerror(errno));
        free(temporary);
        free(png_texts);
        return HG_PNG_ERR_OPEN;
    }
    FILE *file = fdopen(fd, "wb");
    if (file == NULL) {
        hg_message(message, message_capacity, "opening %s: %s", temporary, strerror(errno));
        close(fd);
        unlink(temporary);
        free(temporary);
        free(png_texts);
        return HG_PNG_ERR_OPEN;
    }

    hg_write_request request;
    memset(&request, 0, sizeof request);
    request.pixels = pixels;
    request.rowbytes = (size_t)width * (size_t)channels;
    request.width = width;
    request.height = height;
    request.bit_depth = 8;
    request.color_type = color_types[channels];
    request.compression_level = compression_level;
    request.texts = png_texts;
    request.text_count = text_count;
    code = hg_encode_to_file(file, &request, message, message_capacity);
    free(png_texts);

    if (code == HG_PNG_OK && fflush(file) != 0) {
        hg_message(message, message_capacity, "writing %s: %s", temporary, strerror(errno));
        code = HG_PNG_ERR_WRITE;
    }
    if (code == HG_PNG_OK && fsync(fileno(file)) != 0) {
        hg_message(message, message_capacity, "syncing %s: %s", temporary, strerror(errno));
        code = HG_PNG_ERR_WRITE;
    }
    if (fclose(file) != 0 && code == HG_PNG_OK) {
        hg_message(message, message_capacity, "closing %s: %s", temporary, strerror(errno));
        code = HG_PNG_ERR_WRITE;
    }
    if (code == HG_PNG_OK && rename(temporary, path) != 0) {
        hg_message(message, message_capacity, "renaming %s over it: %s", temporary, strerror(errno));
        code = HG_PNG_ERR_WRITE;
    }
    if (code == HG_PNG_OK) {
        hg_sync_parent_directory(path);
    } else {
        unlink(temporary);
    }
    free(temporary);
    return code;
}

// MARK: - Test helpers

int hg_png_test_write_raw(const char *path, const uint8_t *rows, uint32_t width, uint32_t height,
                          int bit_depth, int color_type, int interlaced,
                          const uint8_t *palette_rgb, int palette_count,
                          const uint8_t *trns_alpha, int trns_alpha_count, const uint16_t *trns_color,
                          char *message, size_t message_capacity) {
    int samples = color_type == PNG_COLOR_TYPE_GRAY ? 1 : color_type == PNG_COLOR_TYPE_GRAY_ALPHA ? 2
                : color_type == PNG_COLOR_TYPE_RGB ? 3 : color_type == PNG_COLOR_TYPE_RGB_ALPHA ? 4
                : color_type == PNG_COLOR_TYPE_PALETTE ? 1 : 0;
    if (path == NULL || rows == NULL || samples == 0 || palette_count < 0 || palette_count > 256) {
        hg_message(message, message_capacity, "bad test image arguments");
        return HG_PNG_ERR_INVALID;
    }
    int code = hg_check_dimensions(width, height, samples * 2, message, message_capacity);
    if (code != HG_PNG_OK) return code;

    png_color palette[256];
    for (int i = 0; i < palette_count; i++) {
        palette[i].red = palette_rgb[3 * i];
        palette[i].green = palette_rgb[3 * i + 1];
        palette[i].blue = palette_rgb[3 * i + 2];
    }
    png_color_16 trns;
    memset(&trns, 0, sizeof trns);
    if (trns_color != NULL) {
        if (color_type == PNG_COLOR_TYPE_GRAY) {
            trns.gray = trns_color[0];
        } else {
            trns.red = trns_color[0];
            trns.green = trns_color[1];
            trns.blue = trns_color[2];
        }
    }

    FILE *file = fopen(path, "wb");
    if (file == NULL) {
        hg_message(message, message_capacity, "%s", strerror(errno));
        return HG_PNG_ERR_OPEN;
    }
    hg_write_request request;
    memset(&request, 0, sizeof request);
    request.pixels = rows;
    request.rowbytes = ((size_t)width * (size_t)samples * (size_t)bit_depth + 7) / 8;
    request.width = width;
    request.height = height;
    request.bit_depth = bit_depth;
    request.color_type = color_type;
    request.interlaced = interlaced;
    request.compression_level = 6;
    request.palette = palette_rgb != NULL ? palette : NULL;
    request.palette_count = palette_count;
    request.trns_alpha = trns_alpha;
    request.trns_alpha_count = trns_alpha_count;
    request.trns_color = trns_color != NULL ? &trns : NULL;
    code = hg_encode_to_file(file, &request, message, message_capacity);
    if (fclose(file) != 0 && code == HG_PNG_OK) {
        hg_message(message, message_capacity, "closing: %s", strerror(errno));
        code = HG_PNG_ERR_WRITE;
    }
    return code;
}
