#include "cpng.h"
#include <png.h>
int hg_png_placeholder(void) { return PNG_LIBPNG_VER; }
