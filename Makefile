# dss-ai-benchmark: train on data from storage while measuring it, then ship the model.
#   make train TASK=detection ACCESS=sequential    (or ACCESS=shards|random|objects; TASK=classification)
#   make train NPROC=4                             (4 ranks under torchrun; NNODES=2 NODE_RANK=...)
#   make archive && make serve                     then: curl -T img.jpg http://127.0.0.1:8080/predictions/detector
#   make stop
#   make test
# Every target builds the environment first when it is missing (make setup).

SHELL := /bin/bash
PY := .venv/bin/python
READY := .venv/.ready

TASK ?= detection
CONFIG ?= configs/$(TASK).yaml
OUT ?= outputs/$(TASK)
MODEL_STORE ?= model_store
# Optional overrides; empty means "as in the config file".
ACCESS ?=
EPOCHS ?=
BATCH_SIZE ?=
WORKERS ?=
LR ?=
LIMIT ?=
SPLIT ?=
ARGS ?=
# Another dataset: DATA=<dir>[,<dir>...] or s3://bucket/prefix[,...]; FORMAT=folder|voc|coco|oid|csv
# (detected when empty).
DATA ?=
FORMAT ?=
# Storage: STORAGE=fs|s3; S3_* override storage.endpoint_url / bucket / prefixes.
STORAGE ?=
S3_ENDPOINT ?=
S3_BUCKET ?=
S3_PREFIX ?=
INPUT ?=
# Several ranks (torchrun, one per accelerator): NPROC on this node; with NNODES > 1 run the
# same command on every node with its NODE_RANK, all naming node 0 as MASTER_ADDR:MASTER_PORT.
NPROC ?=
NNODES ?= 1
NODE_RANK ?= 0
MASTER_ADDR ?= 127.0.0.1
MASTER_PORT ?= 29500
# Seconds node 0 waits for the other nodes to join before it gives up.
RDZV_TIMEOUT ?= 300

flag = $(if $(strip $(2)),--$(1) $(strip $(2)))
# `$(RUN) scripts.train` is one process, or NPROC ranks under torchrun (scripts/launch.py runs
# torch.distributed.run and says in one line why a launch failed).
TORCHRUN = $(PY) -m scripts.launch --nproc-per-node $(NPROC) \
	$(if $(filter-out 1,$(NNODES)),--nnodes $(NNODES) --node-rank $(NODE_RANK) \
	--master-addr $(MASTER_ADDR) --master-port $(MASTER_PORT) \
	--rdzv-conf timeout=$(RDZV_TIMEOUT),--standalone)
RUN = $(if $(strip $(NPROC)),$(TORCHRUN) -m,$(PY) -m)
ifneq ($(strip $(NNODES)),1)
ifeq ($(strip $(NPROC)),)
$(error NNODES=$(NNODES) needs NPROC (ranks on this node): e.g. make train NPROC=8 NNODES=$(NNODES) NODE_RANK=...)
endif
endif
TRAIN_FLAGS = --config $(CONFIG) --out $(OUT) $(call flag,access,$(ACCESS)) $(call flag,epochs,$(EPOCHS)) \
	$(call flag,batch-size,$(BATCH_SIZE)) $(call flag,workers,$(WORKERS)) $(call flag,lr,$(LR)) \
	$(call flag,limit,$(LIMIT)) $(STORAGE_FLAGS) $(ARGS)
STORAGE_FLAGS = $(call flag,storage,$(STORAGE)) $(call flag,s3-endpoint,$(S3_ENDPOINT)) \
	$(call flag,s3-bucket,$(S3_BUCKET)) $(call flag,s3-prefix,$(S3_PREFIX)) \
	$(call flag,data,$(DATA)) $(call flag,format,$(FORMAT))
# The classification dataset of the default run, derived from data/bccd on first use.
CELLS := data/bccd_cells
CELLS_READY := $(CELLS)/train $(CELLS)/val $(CELLS)/test
# What `make train` needs first: the cell crops for the default classification config.
TRAIN_DATA = $(if $(and $(filter classification,$(TASK)),$(filter configs/classification.yaml,$(CONFIG)),$(if $(DATA),,1)),$(CELLS_READY))

.PHONY: setup train cells resume shards predict bench bench-memory sweep checkpoint-bench serve-bench synth \
	archive serve stop \
	status \
	s3-up s3-upload s3-down \
	test test-unit fuzz lint clean help

help:
	@sed -n '2,8p' Makefile | sed 's/^# \{0,1\}//'

$(READY): pyproject.toml uv.lock scripts/setup.sh
	@bash scripts/setup.sh

setup: $(READY)

train: $(READY) $(TRAIN_DATA)
	$(RUN) scripts.train $(TRAIN_FLAGS)

$(CELLS_READY) &: | $(READY)
	$(PY) -m scripts.make_crops --src data/bccd --out $(CELLS)

cells: $(CELLS_READY)

resume: $(READY) $(TRAIN_DATA)
	$(RUN) scripts.train $(TRAIN_FLAGS) --resume

shards: $(READY) $(TRAIN_DATA)
	$(PY) -m scripts.write_shards --config $(CONFIG) $(call flag,split,$(SPLIT)) \
		$(call flag,limit,$(LIMIT)) $(STORAGE_FLAGS)

predict: $(READY)
	$(PY) -m scripts.predict --config $(CONFIG) --out $(OUT) --input "$(INPUT)" \
		$(call flag,s3-endpoint,$(S3_ENDPOINT)) $(ARGS)

# The benchmark matrix: access patterns x storage x modes, baselines, peers, report with plots.
# NPROC=N: every configuration read by N ranks at once (N x NNODES over several nodes).
bench: $(READY) $(TRAIN_DATA)
	$(RUN) scripts.bench --config $(CONFIG) $(call flag,limit,$(LIMIT)) \
		$(call flag,workers,$(WORKERS)) $(call flag,batch-size,$(BATCH_SIZE)) \
		$(call flag,s3-endpoint,$(S3_ENDPOINT)) $(call flag,s3-bucket,$(S3_BUCKET)) \
		$(call flag,s3-prefix,$(S3_PREFIX)) $(call flag,data,$(DATA)) \
		$(call flag,format,$(FORMAT)) $(BENCH_RANKS) $(ARGS)
BENCH_RANKS = $(if $(strip $(NPROC)),--set 'bench.ranks=[$(shell echo $$(( $(NPROC) * $(NNODES) )))]')

# MLPerf Storage v3.0's question: the most simulated accelerators kept at AU >= the workload's
# threshold, per access pattern, and what ran out (WORKLOAD=retinanet|unet3d|resnet50|cosmoflow|bccd,
# ACCELERATOR=b200|mi355|h100|a100; ACCELERATORS=1,2,4: those counts, no search; RULES=closed;
# NPROC=N: up to N x NNODES, else as many as this node's memory hosts).
WORKLOAD ?=
ACCELERATOR ?=
ACCELERATORS ?=
RULES ?=
sweep: $(READY)
	$(RUN) scripts.sweep --config $(CONFIG) $(if $(strip $(WORKLOAD)),--set sweep.workload=$(WORKLOAD)) \
		$(if $(strip $(ACCELERATOR)),--set sweep.accelerator=$(ACCELERATOR)) \
		$(if $(strip $(ACCELERATORS)),--set 'sweep.points=[$(ACCELERATORS)]') \
		$(if $(strip $(RULES)),--set sweep.rules=$(RULES)) $(SWEEP_RANKS) $(ARGS)
SWEEP_RANKS = $(if $(strip $(NPROC)),--set 'sweep.max_accelerators=$(shell echo $$(( $(NPROC) * $(NNODES) )))')

# MLPerf Storage's checkpoint workload: every rank writes its part of a SIZE_GB checkpoint (fs with
# fsync, S3 multipart), reads it back cold and compares it (NPROC=N: N x NNODES ranks at once).
SIZE_GB ?=
checkpoint-bench: $(READY)
	$(RUN) scripts.checkpoint_bench --config $(CONFIG) \
		$(if $(strip $(SIZE_GB)),--set checkpoint.size_gb=$(SIZE_GB)) \
		$(call flag,s3-endpoint,$(S3_ENDPOINT)) $(call flag,s3-bucket,$(S3_BUCKET)) \
		$(CHECKPOINT_RANKS) $(ARGS)
CHECKPOINT_RANKS = $(if $(strip $(NPROC)),--set 'checkpoint.ranks=$(shell echo $$(( $(NPROC) * $(NNODES) )))')

# Serving under load: TorchServe started from MODEL_STORE on free ports, REQUESTS per
# CONCURRENCY level (comma-separated) to each model (MODEL=name: that one), a share BAD of bad bodies.
MODEL ?=
REQUESTS ?= 1000
CONCURRENCY ?= 8
BAD ?= 0
serve-bench: $(READY) $(CELLS_READY)
	$(PY) -m scripts.serve_bench --model-store $(MODEL_STORE) $(call flag,models,$(MODEL)) \
		--requests $(REQUESTS) --concurrency $(CONCURRENCY) --bad $(BAD) $(ARGS)

# Synthetic VOC dataset (real JPEGs, random boxes) to a directory or s3://bucket/prefix.
SYNTH_OUT ?= data/synthetic
N ?= 1000
PRESET ?= mlperf
synth: $(READY)
	$(PY) -m scripts.synth --out $(SYNTH_OUT) --count $(N) --preset $(PRESET) $(ARGS)

# Memory goals: streaming a 1 GB shard, listing 100,000 keys (prints PASS/FAIL).
bench-memory: $(READY)
	$(PY) -m scripts.bench_memory $(ARGS)

# A local S3-protocol server (rclone serve s3) on 127.0.0.1 holding the embedded dataset.
s3-up: $(READY)
	$(PY) -m scripts.s3_local up

# Uploads both embedded datasets (with their shards) as s3://$$S3_BUCKET/bccd/ and bccd_cells/.
s3-upload: $(READY) $(CELLS_READY)
	for task in detection classification; do for split in train test; do \
		$(PY) -m scripts.write_shards --config configs/$$task.yaml --split $$split --storage fs \
		|| exit 1; done; done
	$(PY) -m scripts.s3_local upload --src data/bccd --prefix bccd
	$(PY) -m scripts.s3_local upload --src $(CELLS) --prefix bccd_cells

s3-down: $(READY)
	$(PY) -m scripts.s3_local down

# Archives every trained model (outputs/detection → detector.mar, outputs/classification →
# classifier.mar); OUT=<dir> archives that one only.
ARCHIVE_OUT = $(if $(filter command line environment,$(origin OUT)),--out $(OUT))
archive: $(READY)
	$(PY) -m scripts.archive --model-store $(MODEL_STORE) $(ARCHIVE_OUT)

serve: $(READY)
	$(PY) -m scripts.serve start --model-store $(MODEL_STORE)

stop: $(READY)
	$(PY) -m scripts.serve stop

status: $(READY)
	-@$(PY) -m scripts.serve status

# Two pytest processes (pytest-xdist), each running whole test files, so that a module's fixtures
# (a trained model, TorchServe, a torchrun run) are made once: while one test waits on a server
# or on torchrun ranks, the other process runs. One torch thread each (OMP_NUM_THREADS=1): two
# processes of two threads on 2 cores slowed the training steps 3-6x.
TEST_WORKERS ?= 2

test: $(READY)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

test-unit: $(READY)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not integration"

# The damaged-shard property test at length: 20,000 cases per property, fresh seeds (~15 min).
fuzz: $(READY)
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest tests/test_fuzz_shards.py \
		--hypothesis-show-statistics -W ignore::hypothesis.errors.HypothesisWarning

lint: $(READY)
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

clean:
	rm -rf outputs $(MODEL_STORE) serve/run data/*/shards $(CELLS)
