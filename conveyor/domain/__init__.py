"""Pure model: ids, states and their transition table, priorities, retry policy, events,
workflow graphs. Nothing here does I/O."""
