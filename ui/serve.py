"""`python -m ui.serve [streamlit options]`: the app's server with its job runner started first.

`streamlit run app.py` executes app.py only when a browser opens a session, so the runner (and with it the
recovery of jobs a dead process left running, and the queue) would wait for the first visitor. This
launcher starts the runner in the server's process before the server itself; the pages later find the
same runner in st.cache_resource. `make app` uses it; `streamlit run app.py` still works (app.py starts
the runner on the first session).
"""

from __future__ import annotations

import sys
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "app.py"


def main(argv: list[str] | None = None) -> None:
    from streamlit.web import cli

    from ui import session

    runner = session.get_runner()
    runner.prewarm()  # a worker per device starts now, not with the first job
    for job_id in runner.recovered:
        print(f"job {job_id} was left running by a process that died; marked interrupted", flush=True)
    cli.main(args=["run", str(APP), *(sys.argv[1:] if argv is None else argv)], prog_name="streamlit")


if __name__ == "__main__":
    main()
