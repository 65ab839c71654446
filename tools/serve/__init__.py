"""A local web page over a finished run: samples drawn row by row as the prior writes them, a row per class,
completions of test or uploaded images, and the run's configs, figures, curves and reconstructions.

    python -m tools.serve --run-dir runs/demo      # or: make serve RUN_DIR=runs/demo; see --help

Standard library only (`http.server`): one plain page (page.html, page.js, page.css) served from this package,
and draws streamed to it as JSON lines. `session` loads the run and checks the page's controls, `draws` runs
the prior and turns each finished row of codes into an event, `run_info` reads the run's files, `app` routes.
"""
