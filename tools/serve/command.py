"""See a finished run in the browser: a local page that draws samples as the prior writes them.

    python -m tools.serve --run-dir runs/demo --port 8000     # or: make serve RUN_DIR=runs/demo; see --help

Loads RUN_DIR's checkpoints as the other commands do (weights only) on --device, prints the page's address
and serves until Ctrl-C. The page draws samples (class, guidance, temperature, top-k, seed) row by row, a row
per class, completions of a test or uploaded image, and shows the run's configs, figures, training curves and
reconstructions; a run without a prior (or codes) shows what is missing and the make target that makes it.
Binds 127.0.0.1, this machine only, unless --host says otherwise; --port 0 takes any free port.
"""

import signal

from foundation.cli import UserError, main_entry
from foundation.runtime import cpu_threads, pick_device
from tools.common.finished_run import run_parser
from tools.serve.app import make_server
from tools.serve.session import open_session


def parse_args(argv):
    parser = run_parser(__doc__.split("\n")[0], None)
    parser.prog = "python -m tools.serve"
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s, this machine only; 0.0.0.0: every network)")
    parser.add_argument("--port", type=int, default=8000, help="port; 0 takes any free one (default: %(default)s)")
    parser.add_argument("--max-draws", type=int, default=2,
                        help="draws at once; more wait their turn (default: %(default)s)")
    return parser.parse_args(argv)


@main_entry
def main(argv=None):
    args = parse_args(argv)
    if args.max_draws < 1 or not 0 <= args.port < 65536:
        raise UserError("--max-draws must be at least 1 and --port in [0, 65535]")
    with cpu_threads(args.threads):
        device = pick_device(args.device)
        session = open_session(args.run_dir, device, args.dataset, args.data_dir)
        for line in session.missing:
            print(f"note: {line}")
        try:
            server = make_server(session, args.host, args.port, args.max_draws)
        except OSError as err:
            raise UserError(f"cannot listen on {args.host}:{args.port} ({err.strerror}): try another --port, "
                            "or --port 0 for any free one") from None
        print(f"serving {session.run_dir} on {device} at {server.url} (Ctrl-C stops)", flush=True)
        for stop in (signal.SIGINT, signal.SIGTERM):  # also when started in the background, where SIGINT is ignored
            signal.signal(stop, signal.default_int_handler)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("stopped")
        finally:
            server.server_close()


if __name__ == "__main__":
    main()
