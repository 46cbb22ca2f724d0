// CPNG: libpng, for writing 8-bit RGB PNGs with tEXt metadata.
#include <png.h>
