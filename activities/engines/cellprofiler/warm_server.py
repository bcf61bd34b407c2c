"""A warm CellProfiler: one long-lived headless CellProfiler per engine slot (warm.ts starts it).

CellProfiler's start-up (the interpreter, numpy/scipy/scikit-image, cellprofiler_core, the module
and reader registries, the first pipeline load) costs about two seconds per invocation of the CLI.
This process pays it once and then runs requests with CellProfiler's own headless entry point,
`cellprofiler.__main__.main`, on the same argument list the CLI path passes
(`-c -r -p <pipeline> --file-list <list> | --data-file <csv> -o <out> -t <tmp> -d <done> -e
imageio_reader [--plugins-directory <dir>]`). So a request does exactly what a CLI run does:
`Pipeline.load` of the pipeline file (a few milliseconds once the modules are imported: every run
gets fresh module instances, nothing carries over from the previous run), the file list or LoadData
CSV, `Pipeline.run`, ExportToSpreadsheet and SaveImages into the output folder, and the done file
saying `Complete` or `Failure`.

Protocol (JSON lines):
- stdin: `{"id": <n>, "args": [<CLI arguments>]}` per request; end of input ends the process.
- stdout: `{"type": "ready", ...}` once warmed up, then `{"type": "done", "id": <n>, "exitCode": <int>,
  "rssBytes": <int>, "restart": <bool>}` per request.
- stderr: everything CellProfiler logs or prints (the CLI's stdout and stderr), then a marker line
  `\\x1fcpflow-warm-end <n>` after each request, so the caller knows every line of the request has
  arrived before it reads the done response. The caller parses these lines exactly as it parses the
  CLI's.

Anything a module prints to stdout goes to stderr (fd 1 is pointed at fd 2): stdout carries only the
protocol. The process exits when its parent goes away.
"""
import json
import os
import sys
import threading
import time
import traceback

END_MARKER = "\x1fcpflow-warm-end"


def main():
    # The protocol gets its own copy of stdout; fd 1 (print, C libraries) now writes to stderr.
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = os.fdopen(1, "w", buffering=1)

    watch_parent(os.getppid())

    started = time.time()
    # Importing the CLI's module does what its import does for every CLI run (numpy.seterr, the
    # logging of cellprofiler_core, the readers' registry).
    import cellprofiler.__main__ as cli

    pipeline, plugins = warm_up_arguments(sys.argv[1:])
    warm_up(cli, pipeline, plugins)
    send(protocol, {"type": "ready", "pid": os.getpid(), "seconds": round(time.time() - started, 3), "rssBytes": rss_bytes()})

    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        exit_code, restart = run_request(cli, request["args"])
        sys.stdout.flush()
        sys.stderr.write("%s %s\n" % (END_MARKER, request["id"]))
        sys.stderr.flush()
        send(protocol, {"type": "done", "id": request["id"], "exitCode": exit_code, "rssBytes": rss_bytes(), "restart": restart})
        if restart:
            break


def warm_up_arguments(argv):
    pipeline = None
    plugins = None
    i = 0
    while i < len(argv):
        if argv[i] == "--pipeline":
            pipeline = argv[i + 1]
            i += 2
        elif argv[i] == "--plugins-directory":
            plugins = argv[i + 1]
            i += 2
        else:
            raise SystemExit("warm_server.py: unknown argument %s" % argv[i])
    return pipeline, plugins


def warm_up(cli, pipeline_path, plugins):
    """Imports every module class the pipeline names (and the plugins), as the first run would; a
    prestarted process without a pipeline imports every module class CellProfiler has.

    Nothing of this load is kept: each request loads the pipeline again, as the CLI does, so its
    load messages (a module that cannot be loaded) are part of every request's output. A failure
    here is left for the requests to meet and report.
    """
    from cellprofiler_core.preferences import set_awt_headless, set_headless, set_plugin_directory
    from cellprofiler_core.pipeline import Pipeline
    from cellprofiler_core.reader import fill_readers
    from cellprofiler_core.utilities.logging import set_log_level
    import logging

    set_awt_headless(True)
    set_headless()
    # The CLI's default log level installs the same stderr handler and format before anything logs.
    set_log_level(str(logging.INFO))
    fill_readers(check_config=True)
    if plugins:
        set_plugin_directory(plugins, globally=False)
    if pipeline_path:
        try:
            Pipeline().load(pipeline_path)
        except Exception:
            traceback.print_exc()
    else:
        # Prestarted before any pipeline is known: import every module class now (the package's import
        # fills CellProfiler's module registry), as a pipeline's first load would.
        import cellprofiler_core.modules  # noqa: F401


def run_request(cli, args):
    """One CLI run in this process; returns (exit code, whether the process must be replaced)."""
    from cellprofiler_core.preferences import clear_image_set_file, set_data_file

    # main() sets these only when their flag is given: a request without them must not inherit them.
    set_data_file(None)
    clear_image_set_file()
    sys.argv = ["cellprofiler"] + list(args)
    try:
        return int(cli.main() or 0), False
    except SystemExit as exit_:
        code = exit_.code
        return (code if isinstance(code, int) else (0 if code is None else 1)), True
    except BaseException:
        # What the interpreter prints for an uncaught exception, as the CLI's process would; the
        # process state is unknown afterwards, so it is replaced.
        traceback.print_exc()
        return 1, True


def rss_bytes():
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def send(protocol, message):
    protocol.write(json.dumps(message) + "\n")
    protocol.flush()


def watch_parent(parent):
    """A worker killed with SIGKILL cannot stop its warm CellProfilers: they stop themselves."""

    def watch():
        while True:
            time.sleep(1)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


if __name__ == "__main__":
    main()
