import { main } from './run';

/** The `cellprofiler` pool: one Deployment in Kubernetes (deploy/k8s). */
main(['cellprofiler']);
