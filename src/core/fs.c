/* fs.c — see fs.h. */
#include "core/fs.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "core/error.h"

lasp_status lasp_mkdir_p(const char *dir, lasp_err *err) {
    char p[4096];
    snprintf(p, sizeof p, "%s", dir);
    for (char *c = p + 1;; c++) {
        const char was = *c;
        if (was != '/' && was) continue;
        *c = 0;
        if (mkdir(p, 0777) != 0 && errno != EEXIST)
            return lasp_fail(err, LASP_ERR_IO, "cannot create directory %s: %s", p, strerror(errno));
        struct stat sb;
        if (stat(p, &sb) != 0 || !S_ISDIR(sb.st_mode))
            return lasp_fail(err, LASP_ERR_IO, "%s exists and is not a directory", p);
        *c = was;
        if (!was) return LASP_OK;
    }
}
