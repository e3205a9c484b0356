"""Random-graph fuzzing: a generator drawing small programs from every op family
(`families`, `examples`), checks of compiled code against the interpreter and of the
interpreter's gradients against finite differences (`checks`), and many examples packed
into one graph per compile (`batch`)."""
