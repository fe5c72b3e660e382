# diffusers imports its pipelines and models lazily by name (_LazyModule), which PyInstaller's import
# scan cannot follow, and checks its dependencies' versions through importlib.metadata.
from PyInstaller.utils.hooks import collect_submodules, copy_metadata

_SKIP = ("flax", "onnx", "_jax", "experimental", "commands")

hiddenimports = collect_submodules("diffusers", filter=lambda name: not any(part in name for part in _SKIP))
datas = copy_metadata("diffusers")
# Some diffusers code reads its own source (inspect), so keep the .py files beside the compiled ones.
module_collection_mode = "pyz+py"
