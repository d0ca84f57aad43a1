"""``SearchModule``: the LightningModule of the DPConv search (a :class:`ClassificationModule`).

- The backbone is the supernet (``partialnet.search.supernet``); the architecture logits
  ``arch_logits`` (L, K) live on this module, **outside** ``self.model``, so the weights'
  optimiser (timm's factory on ``self.model``, weight decay as configured) never sees them.
  They get their own optimiser (``search.arch_optimizer``: Adam or SGD with momentum; no weight
  decay, ``search.arch_lr``).
- Manual optimisation: one forward/backward per batch on ``CE + constraint (+ entropy)``; the weights'
  optimiser steps (and its per-step LR schedule), then -- after ``search.warmup_epochs`` -- the
  architecture optimiser. The latter is stepped through the strategy (precision plugin
  included) but not counted as a training step, so ``global_step`` stays "batches trained"
  and the schedules/checkpoint cadence mean what they mean in ``train.py``.
- Warm-up epochs train the weights with every layer fixed at the reference candidate
  (r = 1/4, or the layer's middle candidate), or on uniformly sampled candidates
  (``search.warmup_sampling=uniform``).
- Search epochs sample a Gumbel-Softmax architecture per batch (hard straight-through by
  default) at the temperature ``temperature_at(progress)``, a pure function of the step. In a
  bilevel search, ``search.weight_sampling=uniform`` trains the weights on uniformly sampled
  architectures instead (the logits still step on Gumbel samples of their own batches).
- The exported architecture is the argmax, so the argmax has to meet the budget: with
  ``search.argmax_constraint`` the loss moves from E[F] to the argmax's cost over the search
  (straight-through: the argmax's exact MACs as the value, E[F]'s gradient), and that term's
  weight ``lambda_scale`` rises x1.1 per step while the argmax misses half the tolerance band
  and decays back to 1 inside it (dual ascent; a persistent buffer, so resume stays exact).
  With a constraint on E[F] alone, E[F] met the target while the argmax sat at the dearest
  configuration (+11-14 %). ``search.entropy_weight`` adds an optional late entropy penalty.
- Rows: one per searchable split, plus (``search.space=split+mlp``) one per block's MLP hidden
  width; rows with fewer candidates are padded to a common K and masked by ``arch_valid``.
- Validation (and ``forward``) always runs the argmax one-hot architecture (the warm-up one
  during warm-up): the same masked operator as in training, exactly the static model.
- Randomness: the parent re-seeds the global RNGs per (seed, epoch, rank), so Gumbel noise
  replays exactly on resume; logits and both optimisers' states are in the checkpoint.
"""
from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from partialnet.errors import UserError
from partialnet.search.constraint import argmax_choice, flops_loss
from partialnet.search.cost_model import CostTable, log_key
from partialnet.search.gumbel import gumbel_softmax, masked_logits, temperature_at
from partialnet.search.supernet import LayerSpec, arch_choice, masked_modules, onehot_weights
from partialnet.training.classifier import ClassificationModule
from partialnet.training.optim import build_optimizer, build_scheduler

__all__ = ["SearchModule"]


def _ratio_tag(r: float) -> str:
    return f"{r:.4g}"


class SearchModule(ClassificationModule):
    def __init__(
        self,
        model: nn.Module,
        specs: list[LayerSpec],
        cost: CostTable,
        target_macs: float,
        search: dict,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
        **kwargs,
    ):
        if (kwargs.get("ema") or {}).get("decay") is not None:
            raise UserError("EMA is not supported by the search (the supernet's weights are not the result); use ema=none")
        super().__init__(model, **kwargs)
        self.automatic_optimization = False
        self.specs = list(specs)
        self.cost = cost
        self.target_macs = float(target_macs)
        s = dict(search)
        self.search_cfg = s
        self.candidates = list(specs[0].candidates)
        self.warmup_epochs = int(s.get("warmup_epochs", 0))
        self.warmup_sampling = str(s.get("warmup_sampling", "fixed"))
        self.weight_sampling = str(s.get("weight_sampling", "gumbel"))
        self.hard = bool(s.get("hard", True))
        self.loss_kind = str(s.get("loss", "squared"))
        self.loss_weight = float(s.get("lambda", 20.0))
        self.tau_start, self.tau_end = float(s.get("tau_start", 5.0)), float(s.get("tau_end", 0.1))
        self.tau_schedule = str(s.get("tau_schedule", "exponential"))
        self.arch_lr = float(s.get("arch_lr", 0.01))
        self.arch_betas = tuple(float(b) for b in s.get("arch_betas", (0.9, 0.999)))
        self.entropy_weight = float(s.get("entropy_weight", 0.0))
        self.argmax_constraint = bool(s.get("argmax_constraint", True))
        self.argmax_ramp = bool(s.get("argmax_ramp", True))
        self.arch_optimizer = str(s.get("arch_optimizer", "adam"))
        self.tolerance = float(s.get("tolerance", 0.03))
        self.arch_split = float(s.get("arch_split") or 0.0)
        self.grad_clip_val = gradient_clip_val
        self.grad_clip_algorithm = gradient_clip_algorithm

        n_layers, n_cand = len(specs), len(self.candidates)
        self.arch_logits = nn.Parameter(torch.zeros(n_layers, n_cand))
        self.register_buffer("arch_valid", torch.tensor([sp.valid for sp in specs], dtype=torch.bool), persistent=False)
        self.register_buffer("cost_table", cost.tensor(), persistent=False)
        self.register_buffer("lambda_scale", torch.ones((), dtype=torch.float64))  # checkpointed: exact resume
        self.reference_choice = [sp.reference_index(cost.reference_ratio) for sp in specs]
        self._masked = masked_modules(model, specs)  # plain list: not registered twice
        self._step_counts: tuple[int, int] | None = None

    # ------------------------------------------------------------------ architecture
    def probs(self) -> torch.Tensor:
        return F.softmax(masked_logits(self.arch_logits, self.arch_valid), dim=-1)

    def expected_macs(self) -> torch.Tensor:
        return self.cost.expected(self.probs(), self.cost_table)

    def is_searching(self) -> bool:
        return self.current_epoch >= self.warmup_epochs

    def eval_choice(self) -> list[int]:
        """Argmax architecture (ties -> the reference candidate); the warm-up one during warm-up."""
        if not self.is_searching():
            return list(self.reference_choice)
        return argmax_choice(self.arch_logits, self.arch_valid, self.reference_choice)

    def _steps(self) -> tuple[int, int]:
        """(total training steps, warm-up steps); computed once per fit."""
        if self._step_counts is None:
            total = max(1, int(self.trainer.estimated_stepping_batches))
            epochs = max(1, int(self.trainer.max_epochs or 1))
            self._step_counts = (total, (total // epochs) * self.warmup_epochs)
        return self._step_counts

    def search_progress(self) -> float:
        """0 at the first search step, 1 at the last (clamped)."""
        total, warm = self._steps()
        return min(1.0, max(0.0, (self.global_step - warm) / max(1, total - warm - 1)))

    def temperature(self) -> float:
        return temperature_at(self.search_progress(), self.tau_start, self.tau_end, self.tau_schedule)

    def argmax_macs_st(self) -> torch.Tensor:
        """MACs of the argmax architecture (value) with the gradient of E[F] (straight-through)."""
        p = self.probs()
        choice = argmax_choice(self.arch_logits, self.arch_valid, self.reference_choice)
        onehot = onehot_weights(self.specs, choice, p.device).to(p.dtype)
        return self.cost.expected(onehot + (p - p.detach()), self.cost_table)

    def _update_lambda_scale(self, rel: float) -> None:
        """Dual ascent on the argmax term's weight: x1.1 per step while the argmax's cost is outside
        half the tolerance band, back towards 1 (x0.95) inside it. How strongly the cross-entropy
        pulls towards dear candidates depends on the problem; a fixed lambda loses on some."""
        if abs(rel) > 0.5 * self.tolerance:
            self.lambda_scale.mul_(1.1).clamp_(max=1e6)
        else:
            self.lambda_scale.mul_(0.95).clamp_(min=1.0)

    def mean_entropy(self) -> torch.Tensor:
        """Mean over layers of the normalised entropy of p_l (1 = uniform, 0 = one-hot)."""
        p = self.probs()
        h = -(p * torch.log(p.clamp_min(1e-12))).sum(dim=-1)
        n = self.arch_valid.sum(dim=-1).clamp_min(2).to(p.dtype)
        return (h / torch.log(n)).mean()

    def _sample(self, tau: float, uniform: bool = False) -> tuple[torch.Tensor, list[int] | None]:
        """The architecture of one forward: a Gumbel-Softmax sample of the logits while searching,
        else (warm-up, or ``uniform``) the warm-up rule: every candidate equally likely, or fixed."""
        if self.is_searching() and not uniform:
            w = gumbel_softmax(masked_logits(self.arch_logits, self.arch_valid), tau, hard=self.hard)
        elif self.warmup_sampling == "uniform" or uniform:
            zeros = torch.zeros_like(self.arch_logits)
            w = gumbel_softmax(masked_logits(zeros, self.arch_valid), 1.0, hard=True).detach()
        else:
            return onehot_weights(self.specs, self.reference_choice, self.arch_logits.device), list(self.reference_choice)
        indices = w.detach().argmax(dim=-1).tolist() if (self.hard or uniform or not self.is_searching()) else None
        return w, indices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        choice = self.eval_choice()
        with arch_choice(self._masked, onehot_weights(self.specs, choice, x.device), choice):
            return self.model(x)

    # ------------------------------------------------------------------ train
    def _arch_loss(self, searching: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(constraint + entropy term, constraint); while searching, updates the dual-ascent weight."""
        expected = self.expected_macs()
        constraint = flops_loss(expected, self.target_macs, self.loss_kind, self.loss_weight)
        progress = self.search_progress()
        if self.argmax_constraint and searching:
            # The exported architecture is the argmax: the loss moves from E[F] to the argmax's cost
            # (straight-through: its exact value, E[F]'s gradient) with the search progress, and its
            # weight rises while the argmax misses half the tolerance band (dual ascent).
            on_argmax = self.argmax_macs_st()
            scale = float(self.lambda_scale)
            ramp = progress if self.argmax_ramp else 1.0
            constraint = (1.0 - ramp) * constraint + ramp * scale * flops_loss(
                on_argmax, self.target_macs, self.loss_kind, self.loss_weight)
            self._update_lambda_scale(float(on_argmax.detach()) / self.target_macs - 1.0)
        entropy = self.mean_entropy()
        return constraint + (self.entropy_weight * progress) * entropy, constraint

    def _arch_gradient(self, batch_a, tau: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Bilevel: the logits' gradient of ``CE(x_a) + constraint`` on the architecture part of the
        data (``search.arch_split``). ``autograd.grad`` w.r.t. the logits only: no weight gradient,
        no DDP hook (the gradient is averaged over ranks here). Returns (grad, CE_a, constraint)."""
        x_a, y_a = self.prepare_train_batch(batch_a, mix=False)
        weights, indices = self._sample(tau)
        with arch_choice(self._masked, weights, indices):
            ce_a = F.cross_entropy(self._train_forward(x_a).float(), y_a)
        arch_loss, constraint = self._arch_loss(True)
        (grad,) = torch.autograd.grad(ce_a + arch_loss.to(ce_a.dtype), [self.arch_logits])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(grad)
            grad = grad / torch.distributed.get_world_size()
        return grad, ce_a.detach(), constraint.detach()

    # ------------------------------------------------------------------ train
    def training_step(self, batch, batch_idx):
        opt_w, opt_a = self.optimizers()
        sched = self.lr_schedulers()
        bilevel = len(batch) == 4  # (x_w, y_w, x_a, y_a): search.arch_split (partialnet.search.bilevel)
        if bilevel != (self.arch_split > 0):
            raise UserError(f"search.arch_split={self.arch_split:g} but the training batches have {len(batch)} parts "
                            f"(expected {4 if self.arch_split > 0 else 2}): the DataModule's loader bypassed the split")
        x, target = self.prepare_train_batch(batch[:2])
        res = x.shape[-1]

        searching = self.is_searching()
        tau = self.temperature()
        with torch.no_grad():  # logged as they were before this step's updates
            expected, entropy = self.expected_macs(), self.mean_entropy()
        arch_grad = ce_a = None
        if bilevel and searching:  # the logits' step first, on data the weights never see (first-order)
            arch_grad, ce_a, constraint = self._arch_gradient(batch[2:], tau)
        # Bilevel with weight_sampling=uniform: the weights train on uniformly sampled paths all along,
        # so the shared weights stay fair to every candidate, not only to those the logits favour.
        weights, indices = self._sample(tau, uniform=bilevel and self.weight_sampling == "uniform")
        if bilevel:
            weights = weights.detach()  # the weights' batch gives the logits nothing
        with arch_choice(self._masked, weights, indices):
            logits = self._train_forward(x)
        ce = self.train_loss_fn(logits, target)
        if bilevel:
            if arch_grad is None:  # warm-up: the constraint is only logged
                _, constraint = self._arch_loss(False)
            # 0 x logits keeps DDP's "every parameter gets a gradient" happy; the real one is set below.
            loss = ce + 0.0 * self.arch_logits.sum()
        else:
            arch_loss, constraint = self._arch_loss(searching)
            # During warm-up the logits take no part (0 x keeps DDP's "every parameter used" happy).
            loss = ce + (arch_loss if searching else 0.0 * arch_loss).to(ce.dtype)
        if not torch.isfinite(loss):
            raise UserError(
                f"loss is {loss.item()} at step {self.global_step} (epoch {self.current_epoch}): "
                "lower optim.base_lr or search.arch_lr, or set trainer.gradient_clip_val=1.0"
            )
        opt_w.zero_grad(set_to_none=True)
        opt_a.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.grad_clip_val:
            self.clip_gradients(opt_w, gradient_clip_val=float(self.grad_clip_val),
                                gradient_clip_algorithm=str(self.grad_clip_algorithm))
        opt_w.step()
        if arch_grad is not None:
            self.arch_logits.grad = arch_grad.to(self.arch_logits.dtype)
            opt_a.optimizer.step()  # an unscaled fp32 gradient: no precision plugin in between
        elif searching:
            # Through the strategy (AMP unscale etc.) but not LightningOptimizer.step: no extra global_step.
            self.trainer.strategy.optimizer_step(opt_a.optimizer, closure=lambda: None)
        sched.step()
        if ce_a is not None:
            self.log("search/arch_ce", ce_a.float(), on_step=True, on_epoch=True, batch_size=x.shape[0])

        now = time.perf_counter()
        bs = x.shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=bs)
        self.log("train/ce", ce, on_step=True, on_epoch=True, batch_size=bs)
        if self._step_t0 is not None:
            ips = bs * self.trainer.world_size / max(now - self._step_t0, 1e-9)
            self.log("train/images_per_s", ips, on_step=True, on_epoch=False, batch_size=bs)
        self._step_t0 = now
        self.log("train/resolution", float(res), on_step=False, on_epoch=True, batch_size=bs)
        self.log("search/tau", tau, on_step=True, on_epoch=False, batch_size=bs)
        key, scale = log_key(self.cost.metric)
        self.log(f"search/expected_{key}", expected.float() / scale, on_step=True, on_epoch=True,
                 prog_bar=True, batch_size=bs, sync_dist=True)
        self.log("search/constraint_loss", constraint.detach().float(), on_step=True, on_epoch=True, batch_size=bs,
                 sync_dist=True)
        self.log("search/entropy", entropy.float(), on_step=True, on_epoch=True, batch_size=bs)
        self.log("search/lambda_scale", float(self.lambda_scale), on_step=True, on_epoch=False, batch_size=bs)
        self.log("search/active", float(searching), on_step=True, on_epoch=False, batch_size=bs)
        if self._loggers_write_this_step():  # ~2 values per candidate: only when they are written
            self._log_arch(on_step=True, batch_size=bs)
        return loss

    def _loggers_write_this_step(self) -> bool:
        """Whether the loggers write this training step's values (``trainer.log_every_n_steps``):
        Lightning keeps only those, so the per-candidate values are not computed for the others."""
        connector = getattr(self._trainer, "_logger_connector", None)
        return bool(getattr(connector, "should_update_logs", True))

    def _log_arch(self, on_step: bool, batch_size: int | None = None) -> None:
        """Per-layer probabilities and argmax ratio, argmax GMACs (logged at the loggers' cadence)."""
        probs = self.probs().detach().float().cpu()
        choice = self.eval_choice()
        # identical on every rank (DDP syncs the logits' gradients); sync_dist only silences Lightning
        kw = dict(on_step=on_step, on_epoch=not on_step, batch_size=batch_size, sync_dist=not on_step)
        for l, spec in enumerate(self.specs):  # an MLP row logs its expansion ratios ("_mlp")
            tag = "_mlp" if spec.kind == "mlp" else ""
            for c, r in enumerate(spec.candidates):
                if spec.ks[c] is not None:
                    self.log(f"arch/l{l:02d}{tag}_p{_ratio_tag(r)}", float(probs[l, c]), **kw)
            self.log(f"arch/l{l:02d}{tag or '_ratio'}", float(spec.candidates[choice[l]]), **kw)
        key, scale = log_key(self.cost.metric)
        self.log(f"search/argmax_{key}", self.cost.macs_of(choice) / scale, **kw)

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        self._log_arch(on_step=False)

    # ------------------------------------------------------------------ val
    def validation_step(self, batch, batch_idx):
        choice = self.eval_choice()
        with arch_choice(self._masked, onehot_weights(self.specs, choice, self.arch_logits.device), choice):
            return super().validation_step(batch, batch_idx)

    # ------------------------------------------------------------------ optim
    def configure_optimizers(self):
        opt_w = build_optimizer(self.model, self.optim_cfg, self.lr)
        if self.arch_optimizer == "sgd":  # steps proportional to the gradient: dear layers move first
            opt_a = torch.optim.SGD([self.arch_logits], lr=self.arch_lr, momentum=self.arch_betas[0], weight_decay=0.0)
        else:
            opt_a = torch.optim.Adam([self.arch_logits], lr=self.arch_lr, betas=self.arch_betas, weight_decay=0.0)
        total = int(self.trainer.estimated_stepping_batches)
        epochs = max(1, int(self.trainer.max_epochs or 1))
        steps_per_epoch = max(1, total // epochs)
        scheduler = build_scheduler(opt_w, self.sched_cfg, self.lr, total, steps_per_epoch)
        return [opt_w, opt_a], [{"scheduler": scheduler, "interval": "step"}]

    # ------------------------------------------------------------------ ckpt
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["partialnet"]["search"] = {
            "supernet": True,
            "candidates": self.candidates,
            "layers": [dict(name=s.name, kind=s.kind, dim=s.dim, ks=s.ks) for s in self.specs],
            "target_macs": self.target_macs,
        }
