import { main } from './run';

/** The `workflow` pool: one Deployment in Kubernetes (deploy/k8s). */
main(['workflow']);
