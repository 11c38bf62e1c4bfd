"""Startup hook: BasicSR works in clsr's environment without importing clsr first (issue 24, item 2).

``clsr_basicsr_hook.pth`` (installed into site-packages by setup.py, also by ``pip install -e``)
runs :func:`install` at interpreter start. It only appends/inserts two tiny meta-path finders:
nothing is imported (no torch, no basicsr) until a program imports basicsr. Then:

* ``torchvision.transforms.functional_tensor`` -- which torchvision 0.29 no longer has and
  basicsr 1.4.2 imports -- is served as an alias module by a finder placed *last* on
  ``sys.meta_path``: it answers only when no real finder has the module (an old torchvision
  keeps its own);
* when the ``basicsr`` package has finished importing, :mod:`clsr_arch.compat` is imported,
  which applies every fix (resume on CPU, gloo DDP, atomic checkpoints, ...) and registers
  clsr's archs, datasets and models into BasicSR's registries -- exactly what ``import
  clsr_arch`` before basicsr did by hand. The fixes and why this mechanism: clsr_arch/compat.py.

``CLSR_BASICSR_HOOK=0`` in the environment turns the hook off (plain basicsr then fails to
import on this torchvision, as without clsr).
"""
import os
import sys

ALIAS = 'torchvision.transforms.functional_tensor'
_done = False


class _AliasLoader:
    """Makes the alias module: ``rgb_to_grayscale`` is all basicsr 1.4.2 takes from it."""

    @staticmethod
    def create_module(spec):
        return None

    @staticmethod
    def exec_module(module):
        from torchvision.transforms import functional
        module.rgb_to_grayscale = functional.rgb_to_grayscale
        module.__doc__ = 'clsr alias (clsr_basicsr_hook): the module torchvision removed, for basicsr 1.4.2.'


class FunctionalTensorAlias:
    """Last meta-path finder: the alias for :data:`ALIAS` when torchvision does not have it."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        if fullname != ALIAS:
            return None
        from importlib.machinery import ModuleSpec
        return ModuleSpec(fullname, _AliasLoader(), origin='clsr_basicsr_hook')


class _AfterLoader:
    """Wraps basicsr's own loader; after the package has executed, applies clsr_arch.compat."""

    def __init__(self, loader):
        self.loader = loader

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        if 'clsr_arch.compat' in sys.modules:  # clsr itself is importing basicsr: it applies them
            return
        try:
            import clsr_arch.compat  # noqa: F401
        except Exception as err:  # basicsr stays usable; say why the fixes are missing
            import warnings
            warnings.warn(f'clsr_basicsr_hook: clsr_arch.compat could not be applied after importing basicsr '
                          f'({type(err).__name__}: {err}); set CLSR_BASICSR_HOOK=0 to skip it', RuntimeWarning)


class BasicSRImportHook:
    """First meta-path finder, for the name ``basicsr`` only: finds it with the other finders
    and wraps its loader (:class:`_AfterLoader`)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != 'basicsr':
            return None
        for finder in sys.meta_path:  # the finders after this one, as the import system would
            find = getattr(finder, 'find_spec', None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, 'exec_module'):
                    spec.loader = _AfterLoader(spec.loader)
                return spec
        return None


def install():
    """Register both finders (idempotent); nothing else runs at startup."""
    global _done
    if _done or os.environ.get('CLSR_BASICSR_HOOK', '1') == '0':
        return
    _done = True
    sys.meta_path.insert(0, BasicSRImportHook())
    sys.meta_path.append(FunctionalTensorAlias())
