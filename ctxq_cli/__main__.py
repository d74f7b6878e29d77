"""Entry point for ``python -m ctxq_cli`` (used by torchrun and SLURM scripts)."""

from ctxq_cli.cli import main

main()
