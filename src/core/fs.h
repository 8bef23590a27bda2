/* fs.h — the file-system help every layer shares. */
#ifndef LASP_CORE_FS_H
#define LASP_CORE_FS_H

#include "lasp.h"

#ifdef __cplusplus
extern "C" {
#endif

/* DIR and the directories above it, as `mkdir -p` makes them; a part that exists but is not a directory
 * is an error naming it. */
lasp_status lasp_mkdir_p(const char *dir, lasp_err *err);

#ifdef __cplusplus
}
#endif

#endif
