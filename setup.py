"""clsr: context-aware localized super-resolution (LocalSR / CLSR) as a BasicSR plugin."""
from setuptools import find_packages, setup

setup(
    name='clsr',
    version='0.1.0',
    description='Context-aware localized super-resolution (CLSR) for BasicSR',
    long_description=open('README.md', encoding='utf-8').read() if __import__('os').path.exists('README.md') else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['clsr_arch', 'clsr_arch.*']),
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
