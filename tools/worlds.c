/* worlds.c — the host and NCCL worlds of a command's ranks (worlds.h). */
#include "worlds.h"

#include <stdio.h>

int tools_open_worlds(lasp_comm_backend host, int *argc, char ***argv, int nccl, lasp_comm **world,
                      lasp_comm **gworld) {
    lasp_err err = {0};
    *world = *gworld = NULL;
    if (lasp_comm_world(host, argc, argv, world, &err) != LASP_OK) {
        fprintf(stderr, "error: %s\n", err.msg);
        return 1;
    }
    if (nccl && lasp_comm_world(LASP_COMM_NCCL, NULL, NULL, gworld, &err) != LASP_OK) {
        if (lasp_comm_rank(*world) == 0) fprintf(stderr, "error: %s\n", err.msg);
        lasp_comm_free(*world);
        *world = NULL;
        return 1;
    }
    return 0;
}
