"""The ``tga-fast`` subcommands, one module each: its options and a handler that calls one library function.

Handlers raise; ``tga_fast.cli.main`` turns a user error into one line on stderr and exit code 2. Heavy imports
(transformers, torch) happen inside the handlers, so ``tga-fast --help`` is instant.
"""
