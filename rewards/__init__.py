"""Built-in reward plug-ins (copy a file, edit it, and name it in a recipe as ``path/to/file.py:function``).

Importing this package registers ``exact_match``, ``math_verify``, ``gsm8k``, ``format`` and ``overlong_penalty`` in
``rlkit.registry.REWARDS``.
"""

from rewards import arithmetic, format, gsm8k, math, overlong  # noqa: F401  (registration side effects)
