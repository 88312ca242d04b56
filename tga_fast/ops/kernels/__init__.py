"""The implementations behind each op of ``tga_fast.ops``: one folder per op stem, ``reference.py`` (the
specification and fallback) and ``triton.py`` (the GPU kernel). Kept apart from ``tga_fast/ops/__init__.py`` so that
no public function name shadows a module."""
