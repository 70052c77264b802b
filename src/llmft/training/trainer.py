"""`train(cfg)`: supervised fine-tuning in one plain loop on Accelerate.

One optimizer step consumes G = grad_accum x world_size micro-batches of a deterministic stream (batching.Batcher);
rank r takes micro-batches r, r + world, ... of the step. The model and its chunked loss form one module
(`losses.CausalLMLoss`) that goes through `accelerator.prepare`, so Accelerate's engine moves the gradients: DDP
under torchrun / `accelerate launch` (gloo on CPU, NCCL on GPUs), FSDP under an accelerate FSDP config. Every rank
knows the trainable-token count N of the whole step from the plan; DDP and FSDP average gradients over ranks, so each
forward pass backpropagates loss_sum x world / N, which makes that average exactly the gradient of the token-weighted
mean over the global batch, whatever the world size and however the tokens fall into micro-batches. Only the last
backward of a step synchronises (`accelerator.no_sync` around the others), and every rank runs the same number of
forward passes (a zero-weight two-token filler pass where a rank has fewer rows), because under FSDP each forward is
a collective and under DDP a rank without a micro-batch must still join the all-reduce.

Dropout randomness is reseeded from (seed, step, rank) at every step, so a resumed run draws exactly what the
uninterrupted run drew.
"""
from __future__ import annotations

import math
import statistics
import time
from contextlib import ExitStack, nullcontext
from pathlib import Path

import torch

from llmft import io
from llmft.config import TrainConfig, check
from llmft.training import run_folder as runfolder
from llmft.training.batching import Batcher, model_inputs, packing_is_isolated
from llmft.training.bottleneck import save_bottleneck
from llmft.training.checkpoint import (Progress, check_resumable, gathered_state, list_checkpoints, load_checkpoint,
                                       save_checkpoint, step_seed)
from llmft.training.cpu import choose_compute_dtype
from llmft.training.data import read_training_data
from llmft.training.distributed import check_fsdp, is_fsdp, make_accelerator
from llmft.training.trackers import PROJECT, finish_trackers, loggable_config, make_trackers, tracker_names
from llmft.training.losses import CausalLMLoss
from llmft.training.model import load_tokenizer, resolve_model
from llmft.training.optim import (build_model, make_optimizer, make_scheduler, schedule_of, trainable_parameters,
                                  uses_chunked_loss)
from llmft.training.plan import filler_batch, make_plan, rank_passes, row_cap, split_rows, step_micro_batches
from llmft.training.neftune import embedding_noise
from llmft.training.tokenize import tokenize_records


REFIT_FIRST_AFTER = 3       # time limit: the first re-fit, after this many steps of this process (2 timed ones)
REFITS_PER_RUN = 20         # ... then this many times over the planned steps
REFIT_GROW_UNTIL = 0.5      # ... lengthened only in the first half: later, the cosine decay would jump back up


class Trainer:
    def __init__(self, cfg: TrainConfig):
        check(cfg)
        if cfg.qlora:
            from llmft.training.model import check_qlora_available

            check_qlora_available()
        self.cfg = cfg
        self.started = time.perf_counter()
        self.acc = make_accelerator(log_with=make_trackers(tracker_names(cfg), cfg.out))
        if is_fsdp(self.acc):
            check_fsdp(self.acc.state.fsdp_plugin, cfg)
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.device = self.acc.device
        self.threads = torch.get_num_threads()     # process-wide tuning is the caller's (cpu.tune_process)
        self.dtype_choice = self._choose_dtype()
        self.bf16 = self.dtype_choice.bf16
        self.run_dir = Path(cfg.out)
        self.folder_lock = ExitStack()      # the main process holds the run folder's lock until train() returns
        if self.acc.is_main_process:
            with self.folder_lock.pop_all() as held:    # released at once if a check below refuses the folder
                held.enter_context(runfolder.open_run_dir(self.run_dir, cfg.resume))
                if cfg.resume:
                    check_resumable(self.run_dir, cfg)
                self.folder_lock = held.pop_all()
        self.acc.wait_for_everyone()

    def _choose_dtype(self):
        """The compute dtype (measured on the CPU, cached per machine); every rank takes the main process's choice,
        so a load swing during one rank's probe cannot split the ranks between bf16 and fp32."""
        choice = [choose_compute_dtype(self.cfg.bf16, self.device) if self.acc.is_main_process else None]
        if self.world > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(choice)
        return choice[0]

    # -------- setup

    def setup(self) -> None:
        cfg = self.cfg
        self.tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
        self.data = read_training_data(cfg)
        with self.acc.main_process_first():     # the first process fills the tokenization cache
            self.train_examples, self.train_report = self._tokenize(self.data.train)
            # dev_limit 0: no dev evaluation (tokenizing no rows would fail)
            self.dev_examples, self.dev_report = (self._tokenize(self.data.dev[: cfg.dev_limit])
                                                  if self.data.dev and cfg.dev_limit else ([], None))
        self.model = build_model(cfg, self.device, self.bf16, sharded=is_fsdp(self.acc))
        self.model.train()
        attention = "position_ids" if not cfg.packing or packing_is_isolated(self.model) else "4d"
        self.chunked = uses_chunked_loss(self.model)
        mask_dtype = self.model.get_input_embeddings().weight.dtype
        self.batcher = Batcher(self.train_examples, packing=cfg.packing, batch_tokens=cfg.batch_tokens,
                               batch_size=cfg.batch_size, seed=cfg.seed, pad_id=self.tokenizer.pad_token_id,
                               attention=attention, mask_dtype=mask_dtype)
        self.dev_batcher = (Batcher(self.dev_examples, packing=cfg.packing, batch_tokens=cfg.batch_tokens,
                                    batch_size=cfg.batch_size, seed=cfg.seed, pad_id=self.tokenizer.pad_token_id,
                                    attention=attention, mask_dtype=mask_dtype) if self.dev_examples else None)
        self.plan = make_plan(cfg, self.batcher, self.world)
        self.params = list(trainable_parameters(self.model).values())
        self.n_params = sum(p.numel() for p in self.model.parameters())   # before FSDP shards them
        self.filler = filler_batch(self.batcher, self.tokenizer.eos_token_id or 0)
        # DDP/FSDP wrap the model together with its loss. FSDP2: Accelerate re-points the optimizer at the sharded
        # parameters; FSDP1 (use_orig_params) shards the same parameter objects in place.
        # The scheduler stays unprepared: AcceleratedScheduler would step it once per process per optimizer step.
        self.wrapped, self.optimizer = self.acc.prepare(CausalLMLoss(self.model, chunked=self.chunked),
                                                        make_optimizer(self.params, cfg, self.device))
        self.scheduler = make_scheduler(self.optimizer.optimizer, self.plan.total_steps, cfg.warmup_ratio)
        self.progress = Progress()
        self.most_steps = self.plan.total_steps     # a time limit re-fits the total below this, never above
        self.step_times: list[float] = []           # this process's optimizer steps, for the time limit
        checkpoints = list_checkpoints(self.run_dir) if cfg.resume else []
        if checkpoints:
            self.progress = load_checkpoint(checkpoints[-1], self.model, self.wrapped, self.optimizer.optimizer,
                                            self.scheduler, self.plan)
            self.plan.total_steps = schedule_of(self.scheduler).total   # as re-fitted before the interruption
        if self.acc.is_main_process:
            self._write_run_files(attention)
        self.acc.wait_for_everyone()

    def _tokenize(self, rows: list[dict]):
        cfg = self.cfg
        return tokenize_records(rows, self.tokenizer, template=cfg.template, max_length=cfg.max_length,
                                k_positive=cfg.k_positive, train_on=cfg.train_on,
                                cache_dir=io.cache_dir() / "tokenized")

    def _write_run_files(self, attention: str) -> None:
        cfg, run_dir = self.cfg, self.run_dir
        runfolder.write_config(run_dir, cfg)
        runfolder.write_template(run_dir, cfg, model_reference(cfg.model))
        runfolder.write_heldout(run_dir, self.data)
        runfolder.write_manifest(run_dir, cfg, self.data.files, {
            "model": {"name": cfg.model, "path": resolve_model(cfg.model)},
            "device": str(self.device), "world_size": self.world, "cpu_threads": self.threads, "bf16": self.bf16,
            "compute_dtype": self.dtype_choice.to_dict(),
            "distributed": self.acc.distributed_type.value, "engine": type(self.wrapped).__name__,
            "packing_attention": attention if cfg.packing else None, "chunked_loss": self.chunked,
            "row_tokens": row_cap(cfg, self.device, self.bf16) if cfg.packing else None,
            "trainable_parameters": sum(p.numel() for p in self.params),
            "total_parameters": self.n_params,
            "plan": vars(self.plan), "dev_origin": self.data.dev_origin,
            "tokenize": {"train": self.train_report.to_dict(),
                         "dev": self.dev_report.to_dict() if self.dev_report else None},
            "resumed_from_step": self.progress.resumed_from,
        })

    # -------- one step

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def forward(self, batch: dict) -> torch.Tensor:
        """The loss sum of one row batch through the prepared model. Host-to-device copies are non-blocking (from
        pageable memory CUDA stages them before returning), so a micro-batch never waits for the GPU queue."""
        inputs = {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v)
                  for k, v in model_inputs(batch).items()}
        with self.autocast():
            loss_sum, _ = self.wrapped(inputs, batch["labels"].to(self.device, non_blocking=True))
        return loss_sum

    def rows(self, batcher: Batcher, indices: list[int]) -> list[list[int]]:
        if not self.cfg.packing:
            return [indices]
        return split_rows(indices, batcher.lengths, row_cap(self.cfg, self.device, self.bf16))

    def passes(self, batcher: Batcher, micro_batches: list[list[int]]) -> list[list[int] | None]:
        """This rank's rows of `micro_batches` (rank r takes r, r + world, ...), None for a filler pass."""
        rows_of_ranks = [[row for indices in micro_batches[r::self.world] for row in self.rows(batcher, indices)]
                         for r in range(self.world)]
        return rank_passes(rows_of_ranks, self.rank)

    def train_step(self) -> dict:
        """Forward/backward over this rank's rows of the step (gradients synchronised in the last backward only),
        clip, update."""
        step = self.progress.step
        torch.manual_seed(step_seed(self.cfg.seed, step, self.rank))
        micro = step_micro_batches(self.batcher, self.plan, step)
        examples = self.batcher.examples
        n_step = sum(examples[i].n_trainable for mb in micro for i in mb)
        real = sum(len(examples[i]) for mb in micro for i in mb)
        loss_total = torch.zeros((), device=self.device)
        passes = self.passes(self.batcher, micro)
        for k, row in enumerate(passes):
            sync = k == len(passes) - 1
            with nullcontext() if sync else self.acc.no_sync(self.wrapped):
                batch = self.filler if row is None else self.batcher.collate(row)
                with embedding_noise(self.model, self.cfg.neftune_noise_alpha, batch):
                    loss_sum = self.forward(batch)
                # DDP/FSDP average the gradients over ranks: x world / n_step turns that average into the
                # gradient of (sum of token losses of the whole step) / (its trainable tokens on all ranks)
                weight = 0.0 if row is None else self.world / n_step
                self.acc.backward(loss_sum * weight)
            if row is not None:
                loss_total += loss_sum.detach().float()
        grad_norm = self.acc.clip_grad_norm_(self.wrapped.parameters(), self.cfg.max_grad_norm)
        if hasattr(grad_norm, "full_tensor"):     # FSDP2: a replicated DTensor; a plain tensor for logging
            grad_norm = grad_norm.full_tensor()
        lr = self.optimizer.optimizer.param_groups[0]["lr"]     # the scheduler's, or a time-limit re-fit's
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.progress.step += 1
        self.progress.trainable_tokens += n_step
        self.progress.real_tokens += real
        # loss_sum: this rank's part, on the device (summed over ranks only when logged, see `step_loss`)
        return {"loss_sum": loss_total, "n": n_step, "real": real, "lr": lr, "grad_norm": grad_norm}

    def step_loss(self, out: dict) -> float:
        """The step's mean token loss over all ranks (a collective: every rank calls it on the same steps)."""
        return float(self.acc.reduce(out["loss_sum"], reduction="sum")) / out["n"]

    @torch.no_grad()
    def dev_loss(self) -> tuple[float, int] | None:
        if self.dev_batcher is None:
            return None
        self.wrapped.eval()
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        count = 0
        for row in self.passes(self.dev_batcher, self.dev_batcher.plan(0)):
            loss_sum = self.forward(self.filler if row is None else self.dev_batcher.collate(row))
            if row is not None:
                total += loss_sum.double()
                count += sum(self.dev_batcher.examples[i].n_trainable for i in row)
        self.wrapped.train()
        reduced = self.acc.reduce(torch.stack([total, torch.tensor(float(count), dtype=torch.float64,
                                                                      device=self.device)]), reduction="sum")
        return float(reduced[0] / reduced[1]), int(reduced[1])

    # -------- the loop

    def fit(self, stop_after: int | None = None) -> dict | None:
        cfg, plan, main = self.cfg, self.plan, self.acc.is_main_process
        metrics = runfolder.MetricsWriter(self.run_dir / "metrics.jsonl", self.progress.resumed_from) if main else None
        self.acc.init_trackers(PROJECT, config=loggable_config(cfg))
        if self.progress.step == 0:
            self._evaluate(metrics)
        bar = io.progress(total=plan.total_steps, initial=self.progress.step, desc="train", unit="step",
                          **({} if main else {"disable": True}))
        try:
            while self.progress.step < plan.total_steps:
                t0 = time.perf_counter()
                out = self.train_step()
                log_now = self.progress.step % cfg.log_every == 0 or self.progress.step == plan.total_steps
                loss = self.step_loss(out) if log_now else None
                self.step_times.append(time.perf_counter() - t0)
                self.progress.train_seconds += self.step_times[-1]
                if cfg.time_limit_minutes:
                    self._fit_to_time_limit(metrics, bar)
                    if not log_now and self.progress.step == plan.total_steps:   # the re-fit ended the run here
                        log_now, loss = True, self.step_loss(out)
                if log_now and main:
                    self._log_step(metrics, bar, loss, out)
                bar.update(1)
                step = self.progress.step
                if cfg.eval_every and step % cfg.eval_every == 0 and step < plan.total_steps:
                    self._evaluate(metrics)
                if (cfg.save_every and step % cfg.save_every == 0 and step < plan.total_steps) or step == stop_after:
                    self._checkpoint()
                if step == stop_after:
                    return None
            self._evaluate(metrics)
        finally:
            bar.close()
            if metrics:
                metrics.close()
            finish_trackers(self.acc)
        return self._finish()

    def _fit_to_time_limit(self, metrics, bar) -> None:
        """Re-fit the total steps (and with them the cosine decay, and the warm-up while it lasts) to what
        `time_limit_minutes` leaves at this process's mean step so far (its first step, kernel selection and allocator
        growth, left out). First after `REFIT_FIRST_AFTER` steps, whatever the planned total (the plan starts at the
        most steps allowed, which can be thousands), then `REFITS_PER_RUN` times over the run: it may lengthen the
        run until `REFIT_GROW_UNTIL` of it is done and shorten it until the end, never below `time_limit_min_steps`
        nor above the most steps. The limit counts optimizer steps; dev-loss passes and checkpoints are outside it."""
        step, plan, cfg = self.progress.step, self.plan, self.cfg
        timed = len(self.step_times)
        if timed < REFIT_FIRST_AFTER or (timed > REFIT_FIRST_AFTER
                                         and step % max(1, plan.total_steps // REFITS_PER_RUN)):
            return
        mean_s, spent_s = self._agreed_max(statistics.mean(self.step_times[1:]), self.progress.train_seconds)
        left_s = 60.0 * cfg.time_limit_minutes - spent_s
        fits = step + max(0, int(left_s // mean_s)) if mean_s > 0 else self.most_steps
        total = min(self.most_steps, max(fits, cfg.time_limit_min_steps, step))
        growing = total > plan.total_steps
        if total == plan.total_steps or growing and step > REFIT_GROW_UNTIL * plan.total_steps:
            return
        schedule = schedule_of(self.scheduler)
        if step < schedule.warmup:
            schedule.warmup = math.ceil(cfg.warmup_ratio * total)
        plan.total_steps = schedule.total = total
        for group, base_lr in zip(self.optimizer.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base_lr * schedule(self.scheduler.last_epoch)    # the next step already follows the re-fit
        bar.total = total
        bar.refresh()
        if metrics:
            metrics.write({"step": step, "total_steps": total, "mean_step_s": round(mean_s, 3),
                           "elapsed_s": round(time.perf_counter() - self.started, 3)})

    def _agreed_max(self, *values: float) -> list[float]:
        """The largest of each value over all processes, so every rank re-fits to the same total (torch's MAX: older
        accelerate versions summed anything but a mean)."""
        if self.world == 1:
            return list(values)
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor.tolist()

    def _log_step(self, metrics, bar, loss: float, out: dict) -> None:
        p = self.progress
        tokens_per_s = p.real_tokens / p.train_seconds if p.train_seconds else 0.0
        metrics.write({"step": p.step, "loss": round(loss, 6), "lr": out["lr"],
                       "grad_norm": round(float(out["grad_norm"]), 6), "trainable_tokens": p.trainable_tokens,
                       "real_tokens": p.real_tokens, "elapsed_s": round(time.perf_counter() - self.started, 3)})
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:.0f}", refresh=False)
        self.acc.log({"train/loss": loss, "train/lr": out["lr"], "train/grad_norm": float(out["grad_norm"]),
                      "train/tokens_per_s": tokens_per_s}, step=p.step)

    def _evaluate(self, metrics) -> None:
        result = self.dev_loss()
        if result is None or not self.acc.is_main_process:
            return
        loss, n = result
        self.last_dev = loss
        metrics.write({"step": self.progress.step, "dev_loss": round(loss, 6), "dev_tokens": n,
                       "elapsed_s": round(time.perf_counter() - self.started, 3)})
        self.acc.log({"dev/loss": loss}, step=self.progress.step)

    def _checkpoint(self) -> None:
        save_checkpoint(self.run_dir, self.model, self.wrapped, self.optimizer.optimizer, self.scheduler,
                        self.progress, self.plan, self.cfg.keep_checkpoints, self.acc.is_main_process)
        self.acc.wait_for_everyone()

    def _finish(self) -> dict | None:
        summary = None
        # every process takes part in gathering the weights (collective under FSDP); the main one writes them
        state = gathered_state(self.wrapped, trainable_only=self.cfg.method != "full")
        if self.acc.is_main_process:
            self._save_final_model(state)
            summary = self._summary()
            runfolder.plot_loss(runfolder.read_metrics(self.run_dir / "metrics.jsonl"), self.run_dir / "loss.png")
            runfolder.write_summary(self.run_dir, summary)     # last: marks the run complete
        self.acc.wait_for_everyone()
        return summary

    def _save_final_model(self, state: dict[str, torch.Tensor]) -> None:
        name = "model" if self.cfg.method == "full" else "adapter"
        with io.atomic_dir(self.run_dir / name) as tmp:
            if self.cfg.method == "adapter":
                trained = trainable_parameters(self.model)     # the state also names tied weights (lm_head)
                save_bottleneck(tmp, {k: v for k, v in state.items() if k in trained}, self.model.llmft_bottleneck)
            else:
                self.model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
            if name == "model":
                self.tokenizer.save_pretrained(tmp)
        with io.atomic_dir(self.run_dir / "tokenizer") as tmp:
            self.tokenizer.save_pretrained(tmp)

    def _summary(self) -> dict:
        p = self.progress
        metrics = runfolder.read_metrics(self.run_dir / "metrics.jsonl")
        train_losses = [m["loss"] for m in metrics if "loss" in m]
        dev_losses = [m["dev_loss"] for m in metrics if "dev_loss" in m]
        return {
            "steps": p.step, "epochs": round(p.step * self.plan.micro_per_step / self.plan.micro_per_epoch, 4),
            "trainable_tokens": p.trainable_tokens, "real_tokens": p.real_tokens,
            "train_seconds": round(p.train_seconds, 3),
            "seconds": round(time.perf_counter() - self.started, 3),
            "tokens_per_s": round(p.real_tokens / p.train_seconds, 2) if p.train_seconds else None,
            "trainable_tokens_per_s": round(p.trainable_tokens / p.train_seconds, 2) if p.train_seconds else None,
            "final_loss": train_losses[-1] if train_losses else None,
            "initial_dev_loss": dev_losses[0] if dev_losses else None,
            "final_dev_loss": dev_losses[-1] if dev_losses else None,
            "resumed_from_step": p.resumed_from, "world_size": self.world, "device": str(self.device),
            **({"time_limit_minutes": self.cfg.time_limit_minutes, "most_steps": self.most_steps,
                "refits": refits_of(metrics, self.most_steps)} if self.cfg.time_limit_minutes else {}),
            "bf16": self.bf16, **runfolder.peak_memory(),
        }


def refits_of(metrics: list[dict], most_steps: int) -> list[dict]:
    """The time limit's re-fits as metrics.jsonl logged them, so a resumed run lists those before its interruption
    too; the first re-fit starts from the most steps, the plan's total."""
    refits, total = [], most_steps
    for row in metrics:
        if "total_steps" in row:
            refits.append({"step": row["step"], "mean_step_s": row["mean_step_s"], "from": total,
                           "to": row["total_steps"]})
            total = row["total_steps"]
    return refits


def model_reference(name: str) -> str:
    """How template.json names the base model: a local folder by absolute path, anything else as given."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


def train(cfg: TrainConfig, *, stop_after: int | None = None) -> dict | None:
    """Train and return the summary (also in RUN_DIR/summary.json) on the main process, None on the others.

    `stop_after=N` stops right after step N with a checkpoint, as an interrupted run would (tests, benchmarks)."""
    trainer = Trainer(cfg)
    with trainer.folder_lock:
        trainer.setup()
        return trainer.fit(stop_after=stop_after)
