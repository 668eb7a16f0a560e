"""Training without Ray: the step and dev check (`loop`), the engines (DDP, DeepSpeed),
the losses and the dev check's adapter diagnostics."""
