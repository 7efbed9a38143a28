"""``python -m labkit.chapters CHAPTER``: :func:`labkit.chapters.main`."""

from . import main

raise SystemExit(main())
