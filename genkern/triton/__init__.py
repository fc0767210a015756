"""genkern.triton: the Triton backend (@triton.jit kernels and their launchers).

One module per op family plus `activations` (the activation math shared by every kernel). Nothing
here is imported by `import genkern`: the op registry imports a module on the first call that runs
on the "triton" backend, so triton is only needed when it is used.
"""
