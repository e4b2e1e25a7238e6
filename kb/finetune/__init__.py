"""The fine-tune path beside retrieval: training data from the ingested dialogue, a checker, cost, jobs.

Retrieval puts the canon's facts in front of a model; fine-tuning teaches a
model a voice. The studio's notes found the second costly and unreliable for
facts, so this module exists to make the comparison cheap to run, not to
replace retrieval:

- ``build`` turns every spoken line of the ingested scripts into one example
  (the line is the target; the scene's specific information and the turns
  before it are the input), in the chat format or the legacy
  prompt/completion format with its fixed separator and stop sequence;
- ``check_file`` validates a training file the way OpenAI's data preparation
  tool did, line by line, then counts tokens and estimates the cost from the
  editable price table ``kb/finetune/prices.toml``;
- ``submit``, ``status``, ``follow``, ``jobs``, ``cancel`` drive the job
  through ``kb.llm``, the only module that talks to the openai client.

One module each: dataset.py (build), prices.py, check.py, jobs.py.
"""

from kb.finetune.check import check_file
from kb.finetune.dataset import build
from kb.finetune.jobs import cancel, follow, jobs, status, submit
from kb.finetune.prices import load_prices

__all__ = ["build", "cancel", "check_file", "follow", "jobs", "load_prices", "status", "submit"]
