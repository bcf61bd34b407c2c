import { main } from './run';

/** Every pool in one process: the local, laptop-sized deployment used by the demo and tests. */
main(['workflow', 'cellprofiler', 'reduce']);
