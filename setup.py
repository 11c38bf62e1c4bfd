"""clsr: context-aware localized super-resolution (LocalSR / CLSR) as a BasicSR plugin."""
import os.path as osp
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

# issue 24: a startup hook so that a plain `import basicsr` works in this environment
# (clsr_basicsr_hook.py, clsr_arch/compat.py). The .pth must sit at the top of site-packages:
# build_py puts it at the root of a built wheel, editable_wheel at the root of the editable one.
HOOK_PTH = 'clsr_basicsr_hook.pth'


class build_py_with_pth(build_py):
    def run(self):
        super().run()
        if not self.editable_mode:
            self.copy_file(HOOK_PTH, osp.join(self.build_lib, HOOK_PTH), preserve_mode=0)

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        return outputs if self.editable_mode else outputs + [osp.join(self.build_lib, HOOK_PTH)]


class editable_wheel_with_pth(editable_wheel):
    def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):
        result = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
        shutil.copyfile(HOOK_PTH, osp.join(unpacked_wheel, HOOK_PTH))  # the wheel's root: site-packages
        return result


setup(
    name='clsr',
    version='0.1.0',
    description='Context-aware localized super-resolution (CLSR) for BasicSR',
    long_description=open('README.md', encoding='utf-8').read() if __import__('os').path.exists('README.md') else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['clsr_arch', 'clsr_arch.*']),
    py_modules=['clsr_basicsr_hook'],
    cmdclass={'build_py': build_py_with_pth, 'editable_wheel': editable_wheel_with_pth},
    include_package_data=True,
    python_requires='>=3.9',
    install_requires=[
        # basicsr 1.4.2 imports only on this torch/torchvision pair (plus clsr_arch.compat).
        'torch==2.14.1',
        'torchvision==0.29.1',
        'basicsr==1.4.2',
        'lmdb',
        'opencv-python',
        'tensorboard',
        'addict',
        'tqdm',
        'pyyaml',
        'matplotlib',
        'scikit-image',
        # clsr-view (clsr_arch/viewer): the web app and its server
        'fastapi',
        'uvicorn',
        'python-multipart',
        # lazily read images (issue 17): tiled/pyramidal TIFF tiles through zarr; imagecodecs
        # decodes the compressions tifffile does not (zstd, JPEG, ...)
        'tifffile>=2024.8.10',
        'zarr>=3',
        'imagecodecs',
        # any SR network people bring (.pth/.safetensors of ESRGAN, SwinIR, HAT, CRAFT, ...) for
        # LocalSR.from_model / --model-path (issue 24); CRAFT's arch for CLSR-CRAFT
        'spandrel>=0.4.2',
    ],
    # httpx: FastAPI's TestClient; playwright: the real-browser test (drives the system Chromium)
    extras_require={'dev': ['pytest', 'pytest-timeout', 'httpx', 'playwright']},
    package_data={'clsr_arch.viewer': ['static/*']},
    entry_points={'console_scripts': ['clsr-infer=clsr_arch.infer:main', 'clsr-view=clsr_arch.viewer.cli:main']},
)
