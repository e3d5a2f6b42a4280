"""`python -m salad.runtime.bench --worker JOB.json OUT.json` (or `--floor …`): the worker process of `salad bench`."""

import sys

from .worker import worker_main

sys.exit(worker_main(sys.argv[1:]))
