"""``python -m tga_fast <command>``: the same as ``tga-fast <command>``."""

from tga_fast.cli import main

raise SystemExit(main())
