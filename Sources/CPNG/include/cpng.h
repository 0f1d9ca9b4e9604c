#ifndef HGDPO_CPNG_H
#define HGDPO_CPNG_H
int hg_png_placeholder(void);
#endif
