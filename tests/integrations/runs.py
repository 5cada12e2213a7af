"""Real runs written through each library, in-process, on CPU, with nothing downloaded.

The integration tests and the browser tests read these: `hf_run` trains a one-layer GPT-2 built from
its config with a Hugging Face Trainer, `lightning_run` a small MLP with a Lightning Trainer and
`accelerate_run` the same MLP in a plain loop through an Accelerator. The data are synthetic tensors
(next-token-is-token-plus-one sequences; a linear target), so the loss falls like a real curve, and
each training loss has a real planted spike at `spike_at`: the loss of that one step is multiplied
inside the library's own loss hook (compute_loss, training_step), so the gradient norm spikes too.

Each logs loss, learning rate and gradient norm the way users of that library do: Hugging Face with
`logging_steps=1` (loss, learning_rate, grad_norm, epoch); Lightning with `self.log("train_loss")`,
`self.log("lr")` and `self.log("grad_norm")` from `on_before_optimizer_step`; Accelerate with
`accelerator.log({"loss", "lr", "grad_norm"})`. Other trackers are off (`report_to=[]`, no W&B).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SPIKE_FACTOR = 20.0  # large enough that the Live page's detector flags it after the fast early descent
VOCAB, SEQ = 64, 16


class _Counting:
    """A map-style dataset of sequences where each token is the previous plus one (mod VOCAB)."""

    def __init__(self, n: int, seed: int = 0):
        import torch

        g = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, VOCAB, (n, 1), generator=g)
        self.ids = (starts + torch.arange(SEQ)) % VOCAB

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def hf_run(run_dir, steps: int = 60, spike_at: int | None = 40, *, resume: bool = False, **kwargs):
    """Train a tiny GPT-2 for `steps` optimizer steps with a Trainer and MidflightCallback(run_dir).

    The loss HF logs at step `spike_at` is SPIKE_FACTOR times the model's (None: no spike). With
    `resume`, trains to `steps` from the latest checkpoint in run_dir/hf (a second segment). Other
    keywords go to `hf_trainer`. Returns the Trainer."""
    trainer = hf_trainer(run_dir, steps, spike_at, save=resume or "save_steps" in kwargs, **kwargs)
    if resume:
        trainer.train(resume_from_checkpoint=True)
    else:
        trainer.train()
    return trainer


def hf_trainer(
    run_dir,
    steps: int = 60,
    spike_at: int | None = 40,
    *,
    batch: int = 8,
    save: bool = False,
    midflight: dict | None = None,
    **kwargs,
):
    """The Trainer `hf_run` trains, not yet trained. Extra `kwargs` go to TrainingArguments
    (ddp_backend="gloo" for a torchrun test); `midflight`: keywords for MidflightCallback (midflight.init's).
    Its `fail_at` attribute (None) makes compute_loss raise RuntimeError at that global step."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from midflight.integrations.transformers import MidflightCallback

    torch.manual_seed(0)

    class SpikeTrainer(Trainer):
        fail_at: int | None = None

        def compute_loss(self, model, inputs, return_outputs=False, **kw):
            if self.fail_at is not None and self.state.global_step == self.fail_at:
                raise RuntimeError(f"planted failure at step {self.fail_at}")
            out = super().compute_loss(model, inputs, return_outputs=return_outputs, **kw)
            # HF logs the loss of the step it is about to take at global_step + 1
            if spike_at is not None and model.training and self.state.global_step + 1 == spike_at:
                out = (out[0] * SPIKE_FACTOR, *out[1:]) if return_outputs else out * SPIKE_FACTOR
            return out

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=SEQ))
    options = dict(
        output_dir=os.path.join(os.fspath(run_dir), "hf"),
        max_steps=steps,
        per_device_train_batch_size=batch,
        learning_rate=3e-3,
        lr_scheduler_type="linear",
        warmup_steps=5,
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="steps" if save else "no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
    )
    options.update(kwargs)
    args = TrainingArguments(**options)
    callback = MidflightCallback(run_dir, **(midflight or {}))
    return SpikeTrainer(model=model, args=args, train_dataset=_Counting(steps * batch), callbacks=[callback])


class _Linear:
    """x -> w.x + noise, as (x, y) tensors."""

    def __init__(self, n: int, dim: int = 8, seed: int = 0):
        import torch

        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, dim, generator=g)
        w = torch.randn(dim, 1, generator=g)
        self.y = self.x @ w + 0.05 * torch.randn(n, 1, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def _mlp(dim: int = 8):
    import torch

    return torch.nn.Sequential(torch.nn.Linear(dim, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))


def lightning_module(spike_at: int | None = 40, lr: float = 0.15):
    """A LightningModule over `_mlp` that logs train_loss, lr and grad_norm each step, with a spike at `spike_at`."""
    import lightning.pytorch as pl
    import torch

    class Regressor(pl.LightningModule):
        def __init__(self, lr: float = 0.15, hidden: int = 32):
            super().__init__()
            self.save_hyperparameters()
            self.net = _mlp()

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            # Lightning logs a training step's values at the number of optimizer steps before it (0, 1, ...)
            if spike_at is not None and self.global_step == spike_at:
                loss = loss * SPIKE_FACTOR
            self.log("train_loss", loss, on_step=True, on_epoch=False)
            self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)
            return loss

        def on_before_optimizer_step(self, optimizer):
            norms = [p.grad.detach().norm(2) for p in self.parameters() if p.grad is not None]
            self.log("grad_norm", torch.stack(norms).norm(2), on_step=True, on_epoch=False)

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=20, gamma=0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return Regressor(lr=lr)


def lightning_run(
    run_dir, steps: int = 60, spike_at: int | None = 40, *, batch: int = 128, module=None, **trainer_kwargs
):
    """Train `lightning_module` (or `module`) for `steps` steps with Trainer(logger=MidflightLogger(run_dir)).

    `trainer_kwargs` go to the Trainer (devices=2, strategy="ddp" under torchrun). Returns the Trainer."""
    import lightning.pytorch as pl
    import torch

    from midflight.integrations.lightning import MidflightLogger

    pl.seed_everything(0, verbose=False)
    module = module if module is not None else lightning_module(spike_at)
    loader = torch.utils.data.DataLoader(_Linear(steps * batch), batch_size=batch, shuffle=False)
    options = dict(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=MidflightLogger(run_dir),
    )
    options.update(trainer_kwargs)
    trainer = pl.Trainer(**options)
    trainer.fit(module, loader)
    return trainer


def accelerate_run(run_dir, steps: int = 60, spike_at: int | None = 40, *, batch: int = 128):
    """A plain loop through an Accelerator with MidflightTracker(run_dir). Returns the Accelerator."""
    import torch
    from accelerate import Accelerator

    from midflight.integrations.accelerate import MidflightTracker

    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True, log_with=MidflightTracker(run_dir))
    config = {"lr": 0.15, "batch": batch, "steps": steps, "optimizer": "SGD"}
    accelerator.init_trackers("regression", config=config)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=20, gamma=0.5)
    loader = torch.utils.data.DataLoader(_Linear(steps * batch), batch_size=batch)
    model, opt, loader, sched = accelerator.prepare(model, opt, loader, sched)
    for step, (x, y) in enumerate(loader, start=1):
        loss = torch.nn.functional.mse_loss(model(x), y)
        if spike_at is not None and step == spike_at:
            loss = loss * SPIKE_FACTOR
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), 1e9)
        lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        opt.zero_grad()
        accelerator.log({"loss": loss.detach(), "lr": lr, "grad_norm": grad_norm}, step=step)
    accelerator.end_training()
    return accelerator
