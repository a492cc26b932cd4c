"""`ecrf demo`: a whole seeded trial simulated through the application's commands.

`ecrf.demo.defaults` holds the seed, calendar start and accounts (cheap to import);
`ecrf.demo.trial` runs the simulation; `ecrf.demo.patients` is its clinical model.
"""
