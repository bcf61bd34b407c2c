import { main } from './run';

/** The `reduce` pool: one Deployment in Kubernetes (deploy/k8s). */
main(['reduce']);
