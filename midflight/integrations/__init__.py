"""midflight inside the trainer you already have: one line or one argument each.

    from midflight.integrations.transformers import MidflightCallback
    Trainer(..., callbacks=[MidflightCallback("runs/x")])           # Hugging Face

    from midflight.integrations.lightning import MidflightLogger
    Trainer(..., logger=MidflightLogger("runs/x"))                  # Lightning

    from midflight.integrations.accelerate import MidflightTracker
    Accelerator(log_with=MidflightTracker("runs/x"))                # Accelerate

Each module imports its library, so this package imports none of them: a user of one never pays for the
others. They write only through the Recorder (`midflight.init`); docs/architecture.md ("Integrations")
says what each maps and which rank records what.
"""
