# c2pa-python loads its native library (c2pa/libs/libc2pa_c.so, .dll, .dylib) with ctypes from beside
# its own module, which PyInstaller's import scan cannot see; the .rlib there is a build artefact.
from PyInstaller.utils.hooks import collect_dynamic_libs, copy_metadata

binaries = [(source, "c2pa/libs") for source, _ in collect_dynamic_libs("c2pa") if not source.endswith(".rlib")]
datas = copy_metadata("c2pa-python")
