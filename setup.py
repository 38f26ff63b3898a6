import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

# Package data under patchscale_mm/.mim, where OpenMMLab tools look for a
# package's configs, tools and model index: MMEngine resolves `_base_ =
# 'patchscale_mm::seg/...'` in .mim/configs after reading the metafiles that
# .mim/model-index.yml lists, and mim runs .mim/tools. In the checkout these
# are symlinks to configs/, tools/ and model-index.yml (an editable install
# serves the live files); a wheel gets copies.
MIM_FILES = [
    '.mim/model-index.yml', '.mim/configs/**/*.py',
    '.mim/configs/**/metafile.yml', '.mim/tools/**/*.py', '.mim/tools/**/*.sh'
]


def read_requirements(name):
    """Requirement lines of ``requirements/<name>.txt`` without comments."""
    lines = (HERE / 'requirements' / f'{name}.txt').read_text().splitlines()
    return [
        line.split('#')[0].strip() for line in lines
        if line.split('#')[0].strip()
    ]


def scan_extensions():
    """The selective-scan kernels: ``(ext_modules, cmdclass)``.

    The C++ CPU kernel is always built. The CUDA kernel is built only where a
    GPU is visible or ``PATCHSCALE_FORCE_CUDA=1`` (e.g. a GPU-less image
    builder), never with ``PATCHSCALE_FORCE_CUDA=0``, and only with a CUDA
    torch and toolkit: compiling it takes minutes and nothing on a CPU
    machine would use it. Either way the package installs; a kernel that is
    not built falls back to the PyTorch scan.
    """
    try:
        import torch
        from torch.utils.cpp_extension import (CUDA_HOME, BuildExtension,
                                               CppExtension, CUDAExtension)
    except ImportError:
        print('patchscale_mm: torch not importable at build time (use '
              'pip install --no-build-isolation); skipping the scan kernels',
              file=sys.stderr)
        return [], {}
    csrc = Path('patchscale_mm', 'ops', 'csrc')
    cxx = ['-O3', '-g0', '-ffp-contract=fast', '-Wno-psabi']
    # at::parallel_for is inline: without OpenMP in the extension itself it
    # runs every loop on one thread. torch's Linux wheels bring libgomp, which
    # the extension then shares (one OpenMP runtime, torch.set_num_threads
    # applies).
    openmp = ['-fopenmp'] if sys.platform.startswith('linux') else []
    exts = [
        CppExtension(
            'patchscale_mm.ops._C',
            [str(csrc / f) for f in ('ssd_cpu.cpp', 'kernel_threads.cpp', 'ssd_cpu_avx512.cpp',
                                     'ssd_cpu_avx2.cpp', 'ssd_cpu_generic.cpp')],
            depends=[str(csrc / f) for f in ('ssd_cpu.h', 'ssd_cpu_kernel.h', 'ssd_inputs.h',
                                              'kernel_threads.h',
                                              'mixer_cpu.h', 'mixer_cpu_kernel.h',
                                              'mixer_cpu_ops.h')],
            extra_compile_args=cxx + openmp,
            extra_link_args=openmp)
    ]
    force = os.environ.get('PATCHSCALE_FORCE_CUDA')
    want_cuda = force == '1' or (force != '0' and torch.cuda.is_available())
    if force == '0':
        print('patchscale_mm: PATCHSCALE_FORCE_CUDA=0; skipping the CUDA scan '
              'kernel', file=sys.stderr)
    elif not want_cuda:
        print('patchscale_mm: no GPU visible (PATCHSCALE_FORCE_CUDA=1 to force); '
              'skipping the CUDA scan kernel', file=sys.stderr)
    elif torch.version.cuda is None or CUDA_HOME is None:
        print('patchscale_mm: torch without CUDA or no CUDA toolkit (CUDA_HOME); '
              'skipping the CUDA scan kernel', file=sys.stderr)
    else:
        exts.append(
            CUDAExtension(
                'patchscale_mm.ops._C_cuda',
                [str(csrc / 'ssd_cuda.cpp'), str(csrc / 'ssd_cuda_kernel.cu')],
                depends=[str(csrc / f) for f in ('ssd_cuda.h', 'ssd_inputs.h')],
                extra_compile_args=dict(
                    cxx=['-O3'],
                    nvcc=['-O3', '-lineinfo'])))
    return exts, {'build_ext': BuildExtension}


ext_modules, cmdclass = scan_extensions()

version = {}
exec((HERE / 'patchscale_mm' / 'version.py').read_text(), version)

setup(
    name='patchscale_mm',
    version=version['__version__'],
    description='Patch-size scaling for plain vision backbones (ViT/DeiT, '
    'Adventurer) in mmpretrain, mmsegmentation and mmdetection',
    long_description=(HERE / 'README.md').read_text(),
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('tests', 'tests.*', 'configs', 'tools')),
    package_data={'patchscale_mm': MIM_FILES},
    python_requires='>=3.9',
    install_requires=read_requirements('runtime'),
    extras_require={
        'tests': read_requirements('tests'),
        'optional': read_requirements('optional'),
    },
    license='Apache License 2.0',
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
