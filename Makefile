# lasp — build, test, demo.  `make` builds build/liblasp.a, build/liblasp.so and build/lasp;
# `make test` runs every test (`make test SAN=1` under ASan + UBSan); `make demo` runs the main job.
#
# Optional pieces are found by compiling a small probe; whatever is missing is left out and the
# rest builds CPU-only. Override with e.g. `make NO_MPI=1`, `make NO_CUDA=1`, `make CUDA_HOME=...`.

CC        ?= gcc
CUDA_HOME ?= /usr/local/cuda
NVCC      ?= $(CUDA_HOME)/bin/nvcc
# sm_90a for the Hopper tensor-core path, sm_80 as the portable fallback, PTX for anything newer.
CUDA_ARCH ?= -gencode arch=compute_90a,code=sm_90a -gencode arch=compute_80,code=sm_80 \
             -gencode arch=compute_80,code=compute_80

OPT      ?= -O3 -march=native
CFLAGS   := -std=c11 -D_GNU_SOURCE $(OPT) -g -Wall -Wextra -Werror -Wno-unknown-pragmas -Wno-format-truncation -Iinclude -Isrc -fPIC
LDLIBS   := -lm
BUILD    := build

ifeq ($(SAN),1)
  BUILD   := build-san
  CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=address,undefined
endif

# ---- probes ------------------------------------------------------------------------------------
PROBE := mkdir -p $(BUILD)/probe && cd $(BUILD)/probe

HAVE_OPENMP := $(shell $(PROBE) && printf '#include <omp.h>\nint main(void){return omp_get_max_threads()<1;}\n' > omp.c && \
                 $(CC) -fopenmp omp.c -o omp >/dev/null 2>&1 && echo 1)
ifeq ($(HAVE_OPENMP),1)
  CFLAGS  += -fopenmp
  LDFLAGS += -fopenmp
endif

ifndef NO_MPI
HAVE_MPI := $(shell $(PROBE) && printf '#include <mpi.h>\nint main(int c,char**v){MPI_Init(&c,&v);MPI_Finalize();return 0;}\n' > mpi.c && \
              mpicc mpi.c -o mpi >/dev/null 2>&1 && echo 1)
endif
ifeq ($(HAVE_MPI),1)
  CFLAGS  += -DLASP_HAVE_MPI $(shell mpicc --showme:compile 2>/dev/null)
  LDLIBS  += $(shell mpicc --showme:link 2>/dev/null)
  MPIRUN  ?= mpirun
endif

ifndef NO_BLAS
HAVE_BLAS := $(shell $(PROBE) && printf '#include <cblas.h>\nint main(void){float a=1,b=1,c=0;cblas_sgemm(CblasRowMajor,CblasNoTrans,CblasNoTrans,1,1,1,1,&a,1,&b,1,0,&c,1);return c!=1;}\n' > blas.c && \
               $(CC) blas.c -o blas -lopenblas >/dev/null 2>&1 && echo 1)
endif
ifeq ($(HAVE_BLAS),1)
  CFLAGS  += -DLASP_HAVE_BLAS
  LDLIBS  += -lopenblas
else ifndef NO_BLAS
  # the probe links OpenBLAS only, not the reference BLAS of libblas-dev (whose cblas.h is common)
  BLAS_MISSING := (no OpenBLAS: apt-get install libopenblas-dev)
endif

ifndef NO_CUDA
HAVE_CUDA := $(shell $(PROBE) && printf '#include <cuda_runtime.h>\n__global__ void k(){}\nint main(){k<<<1,1>>>();return 0;}\n' > cuda.cu && \
               $(NVCC) -arch=sm_90 cuda.cu -o cuda >/dev/null 2>&1 && echo 1)
endif
ifeq ($(HAVE_CUDA),1)
  CFLAGS  += -DLASP_HAVE_CUDA -I$(CUDA_HOME)/include
  LDLIBS  += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lcublas -lcudart -lstdc++
  NVFLAGS := -std=c++17 -O3 -lineinfo $(CUDA_ARCH) -Iinclude -Isrc -Xcompiler -fPIC,-Wall,-Wextra \
             -Werror all-warnings -DLASP_HAVE_CUDA
  ifeq ($(HAVE_MPI),1)
    NVFLAGS += -DLASP_HAVE_MPI -DOMPI_SKIP_MPICXX -DMPICH_SKIP_MPICXX $(shell mpicc --showme:compile 2>/dev/null)
  endif
  ifndef NO_NCCL
    HAVE_NCCL := $(shell $(PROBE) && printf '#include <nccl.h>\nint main(){int v;ncclGetVersion(&v);return 0;}\n' > nccl.cu && \
                   $(NVCC) nccl.cu -o nccl -lnccl >/dev/null 2>&1 && echo 1)
  endif
endif
ifeq ($(HAVE_NCCL),1)
  CFLAGS  += -DLASP_HAVE_NCCL
  NVFLAGS += -DLASP_HAVE_NCCL
  LDLIBS  += -lnccl
endif

# ---- sources -----------------------------------------------------------------------------------
# Files ending in _mpi.c need MPI, _nccl.c and .cu need CUDA; everything else always builds.
LIB_C   := $(filter-out %_mpi.c %_nccl.c %_cuda.c,$(wildcard src/*/*.c))
ifeq ($(HAVE_MPI),1)
  LIB_C += $(wildcard src/*/*_mpi.c)
endif
ifeq ($(HAVE_CUDA),1)
  LIB_C  += $(wildcard src/*/*_cuda.c)
  LIB_CU := $(wildcard src/*/*.cu)
endif
ifeq ($(HAVE_NCCL),1)
  LIB_C += $(wildcard src/*/*_nccl.c)
endif
TOOL_C  := $(wildcard tools/*.c)
TEST_C  := $(wildcard tests/test_*.c)
GPU_TEST_CU := $(wildcard tests/gpu_*.cu)
# host-only tests of CUDA code (no GPU needed), built where nvcc is
HOST_CU_TESTS := $(if $(HAVE_CUDA),$(if $(filter 1,$(SAN)),,$(patsubst tests/%.cu,$(BUILD)/tests/%,$(wildcard tests/test_*.cu))))

LIB_O   := $(LIB_C:%.c=$(BUILD)/%.o) $(LIB_CU:%.cu=$(BUILD)/%.cu.o)
TOOL_O  := $(TOOL_C:%.c=$(BUILD)/%.o)
TESTS   := $(TEST_C:tests/%.c=$(BUILD)/tests/%)
# nvcc links these without the sanitizer runtime, so a SAN=1 build leaves them out
GPU_TESTS := $(if $(HAVE_CUDA),$(if $(filter 1,$(SAN)),,$(GPU_TEST_CU:tests/%.cu=$(BUILD)/tests/%)))
DEV_CU  := $(if $(HAVE_CUDA),$(if $(filter 1,$(SAN)),,$(wildcard dev/cuda/*.cu)))
DEV_BIN := $(DEV_CU:dev/cuda/%.cu=$(BUILD)/dev/%)

# Rebuild everything when the flags change (a probe result, SAN, NO_*), not only when sources do.
FLAGS_FILE := $(BUILD)/.flags
FLAGS_NOW  := $(CFLAGS) $(LDLIBS) $(NVFLAGS)
$(shell mkdir -p $(BUILD); echo '$(FLAGS_NOW)' | cmp -s - $(FLAGS_FILE) || echo '$(FLAGS_NOW)' > $(FLAGS_FILE))

yn = $(if $(filter 1,$(1)),✓,✗)

.PHONY: all lib test test-gpu bench-gpu demo clean features dev
all: features $(BUILD)/liblasp.a $(BUILD)/liblasp.so $(BUILD)/lasp $(DEV_BIN)

features:
	@echo "lasp build: OpenMP $(call yn,$(HAVE_OPENMP))  MPI $(call yn,$(HAVE_MPI))  BLAS $(call yn,$(HAVE_BLAS))$(if $(BLAS_MISSING), $(BLAS_MISSING))  CUDA $(call yn,$(HAVE_CUDA))  NCCL $(call yn,$(HAVE_NCCL))  [$(BUILD)/]"

$(BUILD)/%.o: %.c $(wildcard include/*.h src/*/*.h tools/*.h) $(FLAGS_FILE)
	@mkdir -p $(dir $@)
	@echo "  CC    $<"
	@$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/%.cu.o: %.cu $(wildcard include/*.h src/*/*.h) $(FLAGS_FILE)
	@mkdir -p $(dir $@)
	@echo "  NVCC  $<"
	@$(NVCC) $(NVFLAGS) -c $< -o $@

$(BUILD)/liblasp.a: $(LIB_O)
	@rm -f $@
	@echo "  AR    $@"
	@ar rcs $@ $^

$(BUILD)/liblasp.so: $(LIB_O)
	@echo "  LD    $@"
	@$(CC) -shared $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/lasp: $(TOOL_O) $(BUILD)/liblasp.a
	@echo "  LD    $@"
	@$(CC) $(LDFLAGS) $(TOOL_O) $(BUILD)/liblasp.a -o $@ $(LDLIBS)

$(BUILD)/tests/%: tests/%.c $(wildcard tests/*.h) $(BUILD)/liblasp.a
	@mkdir -p $(dir $@)
	@echo "  CC    $@"
	@$(CC) $(CFLAGS) $(LDFLAGS) $< $(BUILD)/liblasp.a -o $@ $(LDLIBS)

$(BUILD)/tests/test_%: tests/test_%.cu $(wildcard tests/*.h src/*/*.h)
	@mkdir -p $(dir $@)
	@echo "  NVCC  $@"
	@$(NVCC) $(NVFLAGS) $< -o $@

$(BUILD)/tests/gpu_%: tests/gpu_%.cu $(wildcard tests/*.h) $(BUILD)/liblasp.a
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) $< $(BUILD)/liblasp.a -o $@ -lcublasLt -lcublas $(if $(HAVE_NCCL),-lnccl) $(if $(HAVE_OPENMP),-Xcompiler -fopenmp) \
	    $(if $(HAVE_MPI),$(shell mpicc --showme:link 2>/dev/null | sed 's/-Wl,/-Xlinker /g; s/-pthread/-Xcompiler -pthread/g')) \
	    $(if $(HAVE_BLAS),-lopenblas)

$(BUILD)/dev/%: dev/cuda/%.cu $(BUILD)/liblasp.a
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) $< $(BUILD)/liblasp.a -o $@ -lcublasLt -lcublas $(if $(HAVE_NCCL),-lnccl) $(if $(HAVE_OPENMP),-Xcompiler -fopenmp) \
	    $(if $(HAVE_MPI),$(shell mpicc --showme:link 2>/dev/null | sed 's/-Wl,/-Xlinker /g; s/-pthread/-Xcompiler -pthread/g')) \
	    $(if $(HAVE_BLAS),-lopenblas)

# The test runner counts PASS/FAIL lines over every test binary, CLI script and multi-rank run.
test: all $(TESTS) $(GPU_TESTS) $(HOST_CU_TESTS)
	@BUILD=$(BUILD) HAVE_MPI=$(HAVE_MPI) HAVE_CUDA=$(HAVE_CUDA) SAN=$(SAN) bash tests/run.sh

test-gpu: all $(GPU_TESTS) $(BUILD)/tests/test_comm $(BUILD)/tests/test_sp
	@BUILD=$(BUILD) bash tests/run_gpu.sh

bench-gpu: all
	@$(BUILD)/lasp bench attn --device cuda

demo: all
	@bash tools/demo.sh $(BUILD)/lasp

clean:
	rm -rf build build-san
