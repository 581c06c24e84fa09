"""Compatibility shim: run spirofs 0.3 (written for Salt 2018.3-3002) on Salt 3006-3008.

This is ours, not spirofs code. It is loaded only by the test bed's and the
demo's salt-master and salt-run processes: ``bed.shim_environ()`` puts this
directory first on their PYTHONPATH, and Python imports ``sitecustomize`` at
start-up. The pytest process itself never imports it.

It fixes four of the five incompatibilities listed in
shared/notes/spirofs-server.md; the fifth (Salt 3008 refuses spirofs'
``salt.loader`` entry points) is fixed by configuration: the master's
``engines_dirs``/``fileserver_dirs``/``utils_dirs``/``runner_dirs`` point at
the installed package (see ``bed.master_config``).

Nothing heavy is imported here: the fixes hook in when the relevant module is
first imported, so an unrelated Python process started with this PYTHONPATH
pays almost nothing.
"""

import contextvars
import importlib
import importlib.abc
import importlib.machinery
import os
import sys

#: Address the spiro engine's HTTP(S) servers listen on (fix 5).
BIND_ADDRESS = os.environ.get("SPIROBED_BIND_ADDRESS", "127.0.0.1")
#: For proving a fix is still needed: e.g. SPIROBED_SHIM_DISABLE=4 turns fix 4
#: off (then the stress test in tests/integration/test_bed.py should hang).
DISABLED = set(os.environ.get("SPIROBED_SHIM_DISABLE", "").replace(",", " ").split())

# Fix 1 (imports): spirofs does ``from salt.ext import six`` and
# ``from salt.ext.tornado import web``. Salt dropped its vendored copies (it now
# uses upstream ``tornado``; ``six`` is a separate package), and the Salt loader
# skips a module whose import fails with only a DEBUG log line, so the engine
# would silently never listen. We alias the old names, and every submodule
# under them, to the real modules, lazily, when first imported. Salt 3006
# still ships ``salt.ext.tornado`` (Tornado 4.5): a name Salt itself provides
# is never aliased, so there spirofs runs on the Tornado Salt runs on.
_ALIASES = {"salt.ext.tornado": "tornado", "salt.ext.six": "six"}


def _alias_target(name):
    for old, new in _ALIASES.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old):]
    return None


class _AliasLoader(importlib.abc.Loader):
    """Makes ``import salt.ext.X.y`` return the already-real module ``X.y``."""

    def __init__(self, target):
        self.target = target
        self.real_spec = None

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self.real_spec = module.__spec__
        return module

    def exec_module(self, module):
        # The import system stamped our alias spec on the real module; put the
        # real one back so the module stays what it is (reload, pickling, ...).
        module.__spec__ = self.real_spec


def _salt_ships(name, path):
    """Whether Salt itself provides ``name`` (an aliased name), as 3006 does for tornado."""
    root = next(old for old in _ALIASES if name == old or name.startswith(old + "."))
    if name == root:
        return importlib.machinery.PathFinder.find_spec(name, path) is not None
    # A submodule: real if its package is real (an aliased package carries
    # the name of what it stands for, e.g. "tornado").
    package = sys.modules.get(root)
    return package is not None and package.__name__ == root


class _ShimFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        real = _alias_target(name) if "1" not in DISABLED else None
        if real is not None and not _salt_ships(name, path):
            return importlib.machinery.ModuleSpec(name, _AliasLoader(real))
        if name == "salt.engines":
            # Let the normal machinery load salt.engines, then patch it.
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is not None and spec.loader is not None:
                original_exec = spec.loader.exec_module

                def exec_module(module):
                    original_exec(module)
                    _patch_salt_engines(module)

                spec.loader.exec_module = exec_module
            return spec
        return None


def _patch_salt_engines(module):
    """Run our per-process preparation at the start of the spiro engine process."""
    original_run = module.Engine.run

    def run(self):
        # ``fun`` is "<engine module>.start"; with ``engine_module: spiro`` it
        # is "spiro.start" for every instance, whatever its name.
        if str(self.fun).split(".", 1)[0] == "spiro":
            _prepare_spiro_engine_process()
        return original_run(self)

    module.Engine.run = run


def _prepare_spiro_engine_process():
    """Runs in the forked engine process, before spirofs is loaded in it."""
    import asyncio
    import multiprocessing.pool

    # The Tornado spirofs runs on: Salt's vendored 4.5 on 3006, else (fix 1)
    # upstream tornado.
    ioloop = _spirofs_tornado("ioloop")
    tcpserver = _spirofs_tornado("tcpserver")

    # Fix 4 (shared event loop): the engine process is forked from the
    # salt-master while the master's asyncio loop is current, so it inherits
    # that loop object, whose epoll instance and self-pipe socketpair are the
    # very same kernel objects its sibling processes use. The deploy worker
    # thread wakes the loop through that self-pipe, and the wake-up byte is
    # sometimes read by another process: about one deploy in ten then hangs
    # forever. A loop of our own, created in this process, shares nothing.
    # (The inherited loop is left alone: it is marked running, so it cannot be
    # closed here, and closing it would not help the siblings anyway.)
    if "4" not in DISABLED:
        asyncio.set_event_loop(asyncio.new_event_loop())
        if ioloop.__name__.startswith("salt.ext."):
            # Tornado 4.5 does not run on asyncio: its IOLoop.current() falls
            # back to the process-wide IOLoop.instance(), the master's, with
            # the same shared epoll. Give this process a loop of its own.
            ioloop.IOLoop.clear_current()
            ioloop.IOLoop.clear_instance()
            ioloop.IOLoop(make_current=True)

    # Fix 3 (loader context in threads): spirofs runs every deploy in a
    # multiprocessing ThreadPool worker. Salt 3008 resolves __opts__/__utils__
    # through a contextvars.ContextVar, and a new thread starts with an empty
    # context, so each deploy died with "TypeError: 'NoneType' object is not
    # subscriptable". Running each submitted task inside a copy of the
    # submitting thread's context (as asyncio.to_thread does) fixes it. Scoped
    # to ThreadPool in this process only.
    original_apply_async = multiprocessing.pool.ThreadPool.apply_async

    def apply_async(self, func, args=(), kwds=None, callback=None, error_callback=None):
        ctx = contextvars.copy_context()
        return original_apply_async(
            self, ctx.run, (func, *args), kwds or {}, callback, error_callback
        )

    if "3" not in DISABLED:
        multiprocessing.pool.ThreadPool.apply_async = apply_async

    # Fix 5 (bind address): spirofs calls ``server.listen(port)``, which binds
    # every interface. A test server has no business on the network: default
    # the address to loopback (override with SPIROBED_BIND_ADDRESS).
    original_listen = tcpserver.TCPServer.listen

    def listen(self, port, address=None, *args, **kwargs):
        return original_listen(self, port, address or BIND_ADDRESS, *args, **kwargs)

    if "5" not in DISABLED:
        tcpserver.TCPServer.listen = listen


def _spirofs_tornado(submodule):
    """``salt.ext.tornado.<submodule>`` as spirofs will import it."""
    try:
        return importlib.import_module(f"salt.ext.tornado.{submodule}")
    except ImportError:  # only with fix 1 turned off, on Salt >= 3007
        return importlib.import_module(f"tornado.{submodule}")


if not any(isinstance(finder, _ShimFinder) for finder in sys.meta_path):
    # First in line: otherwise the path finder would load a *second* copy of,
    # e.g., tornado/web.py under the name salt.ext.tornado.web.
    sys.meta_path.insert(0, _ShimFinder())
