"""The typer command-line app of abp-deploy (installed as abp_deploy.cli)."""
