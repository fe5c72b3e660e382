# diffusers' PEFT loader imports `kernels` when it is installed, which reads a JSON file of its own.
from PyInstaller.utils.hooks import collect_data_files

datas = collect_data_files("kernels")
