import { defineQuery, defineSignal } from '@temporalio/workflow';
import type { ExperimentProgress } from '../core/model';

/** Signals and queries of the ExperimentWorkflow, beside it so clients import them from one place. */

export const progressQuery = defineQuery<ExperimentProgress>('progress');
/** A submitter or the watcher added image sets to an open experiment: look for them. */
export const imageSetsAddedSignal = defineSignal('imageSetsAdded');
/** The experiment is closed: no more image sets will come. */
export const sealedSignal = defineSignal('sealed');
