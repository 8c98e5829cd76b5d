"The installed package: `import structloss` needs only torch and numpy, and re-exports the public API."
import importlib, subprocess, sys, textwrap
import structloss

# Chapters that run experiments or draw the book's figures (Part IV, the overview chapters): `structloss run`
# imports them to find their experiments; their names are not part of the top-level API.
BOOK_ONLY = {"at_a_glance", "which_loss"}
# Modules used through their name: `structloss.robustness.blur` is clearer than a top-level `blur`.
NAMESPACED = {"robustness", "bench"}

def is_book_only(name: str) -> bool: return name.endswith("_paper") or name in BOOK_ONLY | NAMESPACED

def test_every_public_name_is_reexported_at_the_top_level():
    import pkgutil
    for info in pkgutil.iter_modules(structloss.__path__):
        if info.name.startswith("_"): continue
        module = importlib.import_module(f"structloss.{info.name}")          # every module imports cleanly
        if is_book_only(info.name): continue
        missing = [n for n in getattr(module, "__all__", []) if getattr(structloss, n, None) is not getattr(module, n)]
        assert not missing, f"structloss.{info.name}: {missing} not re-exported by structloss/__init__.py"

def test_import_needs_only_torch_and_numpy():
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in {'sklearn', 'torchvision', 'matplotlib', 'tqdm', 'mnist1d', 'scipy',
                                          'pytorch_metric_learning', 'nbdev', 'fastcore', 'pandas'}:
                    raise ImportError(f'blocked: {name}')
        sys.meta_path.insert(0, Block())
        import torch, structloss
        x, y = torch.randn(12, 4, requires_grad=True), torch.arange(3).repeat(4)
        structloss.SoftSilhouetteLoss()(x, y).backward()
        print('ok', structloss.__version__)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stderr

def test_version():
    assert isinstance(structloss.__version__, str) and structloss.__version__.count(".") >= 2
